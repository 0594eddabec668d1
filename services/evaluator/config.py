"""The evaluation job's configuration, in one place: the typed :class:`EvaluateConfig` the child
runs, whose fields declare the EvaluateSpec fields' defaults, ranges and choices
(:data:`EVALUATE_PARAMS`), and its ``eval_id`` (the evaluation's name and idempotency key). The door (:func:`resolve_evaluate_spec`)
reports every problem at once and writes nothing. Torch-free."""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from typing import Any

from services.common.storage import artifacts
from services.common.contract.errors import PreconditionError, ValidationError, quote
from services.common.jobs.record import spec_hash
from services.common.contract.naming import INT8, QLORA, check_name
from services.common.contract.params import option, params_of
from services.common.storage.store import ObjectStore
from services.common.data.tasks import get_task, required_columns
from services.common.contract.validation import Problems, held, split_rows, task_mismatch, unknown_keys
from services.evaluator.kv_cache import KV_CACHE_DTYPES

ENGINES = ("auto", "hf", "vllm")  # generation engines (services/evaluator/engines.py)
# The dtype unquantized weights compute in (both engines honour it). auto: FTLAB_EVAL_DTYPE's rule
# (modeling.eval_dtype: bf16 on a CPU with native bf16); compute: the device's compute dtype
# (modeling.compute_dtype: fp32 on CPU, bf16 on a bf16 GPU), the one quantized weights compute in.
DTYPES = ("auto", "compute", "float32", "bfloat16")
# Training-time quantizations whose adapter is evaluated on the quantized base (loading.py).
QUANTIZED_BASES = (QLORA, INT8)


def quantized_dtype(quant_method: str) -> str:
    """The ``dtype`` value that scores an unquantized model in the dtype a model with quantized
    weights computes in on the same evaluator, as the HF engine loads it: QLoRA's NF4 base computes
    in bf16 (modeling.load_quantized_base); every other — bitsandbytes INT8/4-bit, HQQ, an INT8 base —
    in the device's compute dtype (modeling.load_causal_lm, load_quantized_base: ``compute``). What a
    like-for-like evaluation of a quantized model's parent asks for (flows/experiment.py)."""
    return "bfloat16" if quant_method == QLORA else "compute"


@dataclass(frozen=True)
class EvalTask:
    """One task of an evaluation: the task's canonical name, the dataset and split it reads, and
    ``limit`` (first N items; None: all). The EvaluateSpec's ``tasks[i]`` fields; ``--limit``,
    ``--dataset`` and ``--split`` apply to every ``--task`` on the command line."""
    task: str = option(help="repeatable: ai2_arc, squad_v2, ... (at least one)", flag="--task", required=True)
    dataset: str | None = option(None, "dataset each task reads (default: the task's short name: arc, squad...)",
                                 flag="--dataset")
    split: str = option("test", "split each task reads", flag="--split")
    limit: int | None = option(None, "first N items of each task's split (default: all)", kind=int, lo=1,
                               hi=1_000_000, flag="--limit")


@dataclass(frozen=True)
class EvaluateConfig:
    """What an evaluation job runs; its :func:`option` fields are the EvaluateSpec's (proto/ftlab/
    v1/evaluate_spec.proto), each with its one default, range or choices and help
    (:data:`EVALUATE_PARAMS`): ``batch_size`` prompts per generate call, ``max_new_tokens`` per
    item, ``bootstrap_samples`` resamples (seeded by ``seed``) for the 95% CIs. ``eval_id`` names
    the result (``evaluations/<model>/<eval_id>/``)."""
    model: str = option(help="a model in the models bucket", required=True)
    tasks: tuple[EvalTask, ...] = ()
    batch_size: int = option(8, "prompts generated together (1: exact mode)", lo=1, hi=512)
    max_new_tokens: int = option(1000, "generation limit per item, as the study", lo=1, hi=32768)
    seed: int = option(0, "seeds the bootstrap CIs", lo=0, hi=2**31 - 1)
    bootstrap_samples: int = option(1000, "resamples for the 95% CIs", lo=100, hi=100_000)
    engine: str = option("auto", "generation engine (auto: vLLM where installed)", choices=ENGINES)
    engine_check: int = option(0, "vLLM runs: first N items per task also through HF; agreement recorded",
                               lo=0, hi=1_000_000)
    kv_cache_dtype: str = option("auto", "quantized KV cache while generating", choices=tuple(KV_CACHE_DTYPES))
    dtype: str = option("auto", "dtype of unquantized weights (auto: FTLAB_EVAL_DTYPE, bf16 on a bf16 CPU; "
                        "compute: as quantized weights compute here, fp32 on CPU)", choices=DTYPES)
    eval_id: str = option("", "the evaluation's name (default: eval- + the config's hash)")

    @classmethod
    def resolve(cls, spec: dict[str, Any], store: ObjectStore) -> "EvaluateConfig":
        """An EvaluateSpec (proto JSON) -> the config, through the door's checks
        (:func:`resolve_evaluate_spec`: every problem at once; it reads the model's and the
        datasets' manifests, so it needs ``store``)."""
        return cls.from_dict(resolve_evaluate_spec(spec, store))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvaluateConfig":
        """The config back from the job record's JSON (:meth:`to_dict`)."""
        return cls(**{**d, "tasks": tuple(EvalTask(**t) for t in d["tasks"])})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able. The engine, KV-cache and dtype entries appear only when not the default, so the
        configs (and eval ids) of evaluations from before those options stay the same."""
        out = {"model": self.model, "tasks": [dataclasses.asdict(t) for t in self.tasks],
               "batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens, "seed": self.seed,
               "bootstrap_samples": self.bootstrap_samples}
        if self.engine != "auto" or self.engine_check:
            out |= {"engine": self.engine, "engine_check": self.engine_check}
        if self.kv_cache_dtype != "auto":
            out["kv_cache_dtype"] = self.kv_cache_dtype
        if self.dtype != "auto":
            out["dtype"] = self.dtype
        if self.eval_id:
            out["eval_id"] = self.eval_id
        return out

    def default_eval_id(self) -> str:
        """``eval-`` + 16 hex digits of the config's hash (without eval_id): the same settings
        always get the same id, so a resubmission finds the committed result."""
        return "eval-" + spec_hash(dataclasses.replace(self, eval_id="").to_dict())


# The EvaluateSpec fields (proto/ftlab/v1/evaluate_spec.proto), the repeated tasks' after the model.
_TOP = params_of(EvaluateConfig)
EVALUATE_PARAMS = _TOP[:1] + params_of(EvalTask, "tasks.") + _TOP[1:]
PARAMS = {p.name: p for p in EVALUATE_PARAMS}


def resolve_evaluate_spec(spec: dict[str, Any], store: ObjectStore) -> dict[str, Any]:
    """The evaluator's door: an EvaluateSpec as proto JSON -> the config the child runs
    (:meth:`EvaluateConfig.to_dict`, the job record's form), ``eval_id`` derived unless given.
    Reads the model's and each dataset's manifest. Raises ValidationError (every problem),
    NotFoundError, or PreconditionError (a model without weights, an existing evaluation);
    writes nothing."""
    p = Problems()
    p.add(unknown_keys(spec, PARAMS))  # strict: a field this evaluator does not know is refused
    blocked = ""  # FAILED_PRECONDITION: the model exists but cannot be evaluated
    model = spec.get("model", "")
    p.require(bool(model), "model: required") and p.add(check_name("model", model))
    batch_size, max_new, seed, n_boot = (PARAMS[f].read(p, spec) for f in ("batch_size", "max_new_tokens", "seed",
                                                                          "bootstrap_samples"))
    engine = spec.get("engine") or PARAMS["engine"].default
    p.require(engine in ENGINES, f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    p.require(engine != "vllm" or importlib.util.find_spec("vllm") is not None,
              "engine: 'vllm' requested but vLLM is not installed in the evaluator's environment")
    engine_check = PARAMS["engine_check"].read(p, spec)
    kv_cache = spec.get("kv_cache_dtype") or PARAMS["kv_cache_dtype"].default
    p.require(kv_cache in KV_CACHE_DTYPES, f"kv_cache_dtype: unknown {str(kv_cache)[:40]!r}; known: {', '.join(KV_CACHE_DTYPES)}")
    p.require(kv_cache == "auto" or engine != "vllm",
              "kv_cache_dtype: a quantized KV cache runs on HF generate; it cannot be combined with engine 'vllm'")
    dtype = spec.get("dtype") or PARAMS["dtype"].default
    p.require(dtype in DTYPES, f"dtype: {str(dtype)[:40]!r} is not one of {', '.join(DTYPES)}")
    p.require(bool(spec.get("tasks")), "tasks: at least one task is required")
    tasks = []
    for i, t in enumerate(spec.get("tasks", [])):
        where = f"tasks[{i}]"
        limit = t.get("limit")  # checked before the task, so an unknown task does not hide a bad limit
        lim = PARAMS["tasks.limit"]
        p.require(limit is None or lim.lo <= limit <= lim.hi, f"{where}.limit: {limit} must be in {lim.range_text()}")
        try:
            task = get_task(t.get("task", ""))
        except ValidationError as exc:
            p.invalid.append(f"{where}.task: {exc}")
            continue
        dataset, split = t.get("dataset") or task.short, t.get("split") or PARAMS["tasks.split"].default
        p.add(check_name(f"{where}.dataset", dataset) + check_name(f"{where}.split", split))
        ds = artifacts.read_manifest(store, "datasets", dataset) if not check_name("d", dataset) else None
        if ds is None:
            p.not_found(f"{where}.dataset: {dataset!r} not found in the datasets bucket" + held(store, "datasets"))
        elif split not in ds.get("splits", {}):
            p.invalid.append(f"{where}.split: dataset {dataset!r} has no split {split!r} "
                             f"(has: {', '.join(sorted(ds.get('splits', {})))})")
        else:
            cols = set(ds["splits"][split].get("columns", []))
            missing = [c for c in required_columns(task) if c not in cols]
            if missing:  # stored content that is wrong for the task
                p.stored(f"{where}.dataset: {dataset!r} lacks the {task.name} columns {missing}")
            p.add(task_mismatch(f"{where}.task", task.name, dataset, ds))
            p.add(split_rows(f"{where}.limit" if limit else f"{where}.split", dataset, ds, split, limit))
        tasks.append(EvalTask(task.name, dataset, split, limit))
    names = [t.task for t in tasks]
    p.require(len(names) == len(set(names)), f"tasks: each task at most once (got {names})")
    if model and not check_name("model", model):  # listed with the other problems
        manifest = artifacts.read_manifest(store, "models", model)
        if manifest is None:
            p.not_found(f"model: {model!r} not found in the models bucket" + held(store, "models"))
        elif manifest.get("merged") is False and manifest.get("adapter_path"):  # adapter-only: needs its base
            base = manifest.get("base_model") or next(iter(manifest.get("parents") or []), None)
            if not base or artifacts.read_manifest(store, "models", base) is None:
                p.not_found(f"model: {model!r} is an adapter whose base model {base!r} is not in the models bucket")
            p.add(_dtype_of_quantized(model, manifest, dtype))
        elif "config.json" not in {f.get("path") for f in manifest.get("files", [])}:
            blocked = f"model: {quote(model)} holds no model weights (no config.json) and no adapter"
        else:
            p.add(_dtype_of_quantized(model, manifest, dtype))
    eval_id = spec.get("eval_id", "")
    if eval_id:
        p.add(check_name("eval_id", eval_id))
    p.raise_if_any()
    if blocked:
        raise PreconditionError(blocked)
    cfg = EvaluateConfig(model, tuple(tasks), batch_size, max_new, seed, n_boot, engine, engine_check, kv_cache, dtype)
    cfg = dataclasses.replace(cfg, eval_id=eval_id or cfg.default_eval_id())
    if artifacts.read_manifest(store, "evaluations", f"{model}/{cfg.eval_id}") is not None:
        raise PreconditionError(f"evaluation {model}/{cfg.eval_id} already exists: it is these settings' result "
                                f"(s3://evaluations/{model}/{cfg.eval_id}/, ftlab eval list); give another eval_id "
                                "to evaluate again")
    return cfg.to_dict()


def _dtype_of_quantized(model: str, manifest: dict[str, Any], dtype: str) -> list[str]:
    """A dtype other than auto for a model whose weights are quantized (a post-training
    quantization, an adapter on a QLoRA/INT8 base): refused, since they compute in their own dtype
    (``quantized_dtype``) whatever is asked; silently ignoring it would record a dtype not asked for."""
    quant = manifest.get("quantization") or {}
    method = quant.get("method")
    adapter_on_quantized = manifest.get("merged") is False and method in QUANTIZED_BASES
    if dtype == "auto" or not (manifest.get("kind") == "quantized" or adapter_on_quantized):
        return []
    what = f"an adapter on a {method}-quantized base" if adapter_on_quantized else f"quantized ({method})"
    return [f"dtype: {dtype!r} cannot be honoured: model {model!r} is {what}, its weights compute in their own "
            f"dtype; dtype sets unquantized weights only (leave it unset)"]
