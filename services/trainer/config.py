"""The training job's configuration, in one place: the typed :class:`TrainConfig` the training
child runs, whose fields declare every TrainSpec field's default, range or choices
(:data:`TRAIN_PARAMS`; the adapter's, :data:`ADAPTER_PARAMS`, are the PEFT plugins' options,
services/trainer/peft/), its model name and its run key. The servicer's door
(:func:`resolve_train_spec`), the recipe, the memory estimator, the flows, the dry run and the
CLI all read these; nobody else holds a default. Torch-free."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from services.common.storage import artifacts
from services.common.hardware import devices
from services.common.hardware.cpu_features import cpu_has_bf16
from services.common.contract.errors import NotFoundError, PreconditionError, ValidationError, quote
from services.common.contract.naming import QuantMethod, check_name, trained_model_name
from services.common.contract.params import option, params_of
from services.common.storage.store import ObjectStore
from services.common.data.tasks import get_task, required_columns
from services.common.contract.validation import (Problems, check_module_names, held, model_weights_problem, split_rows, task_mismatch,
                                        unknown_keys)
from services.trainer.peft import PEFT_METHODS, SPEC_BLOCK, AdapterOptions, PeftMethod, adapter_params

# Training-time quantization of the base -> the study's QuantMethod (the name tag).
TRAINING_QUANT = {"none": QuantMethod.NO_QUANT, "qlora": QuantMethod.QLORA, "int8": QuantMethod.INT8}
# Optimizer -> transformers' `optim` name; the 8-bit ones need bitsandbytes' CUDA kernels.
OPTIMIZERS = {"adamw_torch": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit",
              "paged_adamw_8bit": "paged_adamw_8bit", "adafactor": "adafactor", "sgd": "sgd"}
GPU_ONLY_OPTIMIZERS = {"adamw_8bit", "paged_adamw_8bit"}
LR_SCHEDULERS = ("linear", "cosine", "constant_with_warmup")
RESUME = ("auto", "never")
TRAIN_DTYPES = ("auto", "float32", "bfloat16")
CHECKPOINTS_PREFIX = "checkpoints/trainer"  # in the `jobs` bucket; job records live under trainer/
DEVICE_TYPES = ("cuda", "cpu")

# Config entries that do not change what is trained: left out of the run key.
BOOKKEEPING = ("resume", "save_steps", "logging_steps", "device_type", "checkpoint_prefix", "memory_estimate",
               "memory_estimate_gb")


def device_budget_gb() -> float | None:
    raw = os.environ.get("FTLAB_DEVICE_MEMORY_GB", "")
    try:
        return float(raw) if raw else None
    except ValueError:
        raise PreconditionError(f"FTLAB_DEVICE_MEMORY_GB={raw!r} is not a number (GiB per device)") from None


@dataclass(frozen=True)
class TrainConfig:
    """What a training job runs; its :func:`option` fields are the TrainSpec's (proto/ftlab/v1/
    train_spec.proto), each with its one default, range or choices and help (:data:`TRAIN_PARAMS`).
    Units: steps and rows are counts, ``learning_rate`` per step, ``max_seq_length`` in tokens,
    ``memory_estimate_gb`` in GiB per device. ``adapter`` is the PEFT method's options (the spec's
    ``lora`` block, services/trainer/peft/), None for full fine-tuning. ``task``,
    ``checkpoint_prefix`` and the memory estimate are filled at the door (they read storage);
    ``answer_logits_only`` is not a spec field (benchmarks turn it off to compute the study's
    full-sequence logits)."""
    base_model: str = option(help="a model in the models bucket", required=True)
    dataset: str = option(help="a dataset in the datasets bucket", required=True)
    task: str = option("", "task definition (default: the dataset's task)")
    output_name: str = option("", "model name (default: the study's {base}-{dataset}_SFT_{Peft}{r}_{quant})")
    peft_method: str = option("lora", "PEFT method (none: full fine-tuning)", choices=tuple(PEFT_METHODS),
                              flag="--peft")
    training_quant: str = option("none", "quantization of the base while training (qlora: NF4)",
                                 choices=tuple(TRAINING_QUANT))
    max_steps: int = option(0, "optimizer steps (default: train by --num-train-epochs)", lo=1, hi=1_000_000)
    num_train_epochs: float = option(1.0, "epochs over the training rows", lo=0, hi=100, lo_open=True)
    per_device_batch_size: int = option(4, "examples per micro-batch and process", lo=1, hi=1024)
    gradient_accumulation_steps: int = option(2, "micro-batches per optimizer step", lo=1, hi=1024)
    learning_rate: float = option(2e-4, "peak learning rate", lo=0, hi=1, lo_open=True)
    weight_decay: float = option(0.0, "AdamW weight decay", lo=0, hi=1)
    warmup_ratio: float = option(0.03, "fraction of the steps warming the learning rate up", lo=0, hi=1)
    max_grad_norm: float = option(1.0, "gradient clipping norm", lo=0, hi=1e6, lo_open=True)
    max_seq_length: int = option(1024, "tokens per example (longer prompts lose their start)", lo=16, hi=131072)
    seed: int = option(42, "seeds the model's init, the data order and VeRA's projections", lo=0, hi=2**31 - 1)
    merge_after_train: bool = option(True, "also save the adapter merged into the base")
    train_limit: int = option(0, "first N training rows (0: all)", lo=0, hi=10_000_000)
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory)")
    save_steps: int = option(50, "checkpoint to storage every N steps (0: never)", lo=0, hi=1_000_000)
    resume: str = option("auto", "auto: continue from this run's last checkpoint", choices=RESUME)
    optimizer: str = option("adamw_torch", "the 8-bit ones need a CUDA GPU", choices=tuple(OPTIMIZERS))
    packing: bool = option(True, "pack a micro-batch into rows (attention within each example)")
    group_by_length: bool = option(False, "batches of similar length (needs --no-packing)")
    completion_only_loss: bool = option(True, "loss on the answer only")
    lr_scheduler: str = option("linear", "learning-rate schedule", choices=LR_SCHEDULERS)
    world_size: int = option(1, "processes under torchrun (DDP; FSDP for full FT on GPUs)", lo=1, hi=64)
    logging_steps: int = option(1, "loss/lr events every N steps", lo=1, hi=100_000)
    dtype: str = option("auto", "training dtype (auto: bf16 on GPUs that have it; on a CPU with native bf16, "
                        "bf16 for an adapter's frozen linear layers but the head, the rest fp32; else fp32)",
                        choices=TRAIN_DTYPES)
    adapter: AdapterOptions | None = None
    device_type: str = "cuda"
    checkpoint_prefix: str = ""
    memory_estimate: dict[str, float] | None = field(default=None, compare=False)
    memory_estimate_gb: float = 0.0
    answer_logits_only: bool = True

    @property
    def method(self) -> PeftMethod:
        return PEFT_METHODS[self.peft_method]

    @property
    def quant(self) -> QuantMethod:
        return TRAINING_QUANT[self.training_quant]

    def bf16_frozen_on_cpu(self, device_type: str) -> bool:
        """An adapter trained on a CPU computes its frozen linear layers in bf16, the rest in fp32
        (services/trainer/cpu_bf16.py): with ``dtype: bfloat16``, and with ``auto`` on a CPU with
        native bf16 (docs/BENCHMARKS.md: fp32's loss curve within 0.006, faster); ``float32`` keeps
        fp32's exact curve. Full fine-tuning and quantized bases are never converted."""
        if device_type != "cpu" or self.training_quant != "none" or self.method.full:
            return False
        return self.dtype == "bfloat16" or (self.dtype == "auto" and cpu_has_bf16())

    @classmethod
    def resolve(cls, spec: dict[str, Any], device_type: str | None = None) -> "TrainConfig":
        """A TrainSpec as proto JSON (``spec_to_dict``; YAML gives the same shape) -> the config,
        defaults filled, the output name derived (``trained_model_name``), without storage:
        ``task`` stays as given. ``device_type`` (cuda | cpu): the trainer's, default
        :func:`services.common.hardware.devices.device_type`. Raises ValidationError listing every problem."""
        p = Problems()
        cfg = _resolve(p, spec, device_type)
        p.raise_if_any()
        return cfg

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """The config back from :meth:`to_dict` (the job record's JSON, the DDP payload)."""
        d = dict(d)
        lora = d.pop(SPEC_BLOCK, None)
        options = PEFT_METHODS[d.get("peft_method", PARAMS["peft_method"].default)].options
        return cls(adapter=options(**lora) if lora and options else None, **d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, with the adapter under ``lora`` as in the spec (the job record's config)."""
        out = {("lora" if f.name == "adapter" else f.name): getattr(self, f.name) for f in dataclasses.fields(self)}
        out["lora"] = self.adapter.to_dict() if self.adapter else None
        if self.answer_logits_only:  # the default stays out of the record (and of the run key)
            del out["answer_logits_only"]
        if self.dtype == "auto":  # likewise: runs keyed before the field existed keep their key
            del out["dtype"]
        return out

    def run_key(self) -> str:
        """Identifies a training run across attempts and resubmissions: the same settings resume
        the same checkpoints; different settings never do (12 hex digits of a sha256)."""
        keep = {k: v for k, v in self.to_dict().items() if k not in BOOKKEEPING}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


# The TrainSpec fields (proto/ftlab/v1/train_spec.proto), in the config's order, and the adapter's.
TRAIN_PARAMS = params_of(TrainConfig)
ADAPTER_PARAMS = adapter_params()
PARAMS = {p.name: p for p in TRAIN_PARAMS + ADAPTER_PARAMS}


def _adapter(p: Problems, block: dict[str, Any], method: PeftMethod) -> AdapterOptions | None:
    """The spec's ``lora`` block read into the method's options (its plugin's dataclass)."""
    if method.full:
        p.require(not block, f"lora: adapter settings given but peft_method is {method.name!r} (full fine-tuning)")
        return None
    values: dict[str, Any] = {}
    for param in ADAPTER_PARAMS:
        if param.key not in method.fields:
            p.require(param.key not in block, f"{param.name}: {method.name} takes no {param.key} "
                                              f"(its fields: {', '.join(method.fields)})")
        elif param.kind is list:  # absent: the default; given empty is refused (it was the default, named as such)
            given = block.get(param.key, param.default)
            ok = isinstance(given, (list, tuple)) and len(given) > 0
            p.require(ok, f"{param.name}: {quote(given)} must be a non-empty list of module names")
            values[param.key] = list(given) if ok else list(param.default)
            check_module_names(p, param.name, values[param.key] if ok else [])
        else:
            values[param.key] = param.read(p, block)
    return method.options(**values).filled()


def _resolve(p: Problems, spec: dict[str, Any], device_type: str | None) -> TrainConfig:
    p.add(unknown_keys(spec, PARAMS))  # strict: a field this trainer does not know is refused
    values: dict[str, Any] = {}
    for param in TRAIN_PARAMS:
        if param.required:  # names
            value = spec.get(param.name, "")
            p.require(bool(value), f"{param.name}: required") and p.add(check_name(param.name, value))
        elif param.name == "max_steps" and spec.get("max_steps", 0) == 0:
            value = 0  # unset: train by epochs (an explicit 0 is refused below)
        else:
            before = len(p.invalid)
            value = param.read(p, spec)
            if len(p.invalid) > before:  # refused (listed): the config holds the default, so the checks below
                value = param.default    # and a method's spec_problems compare well-typed values
        values[param.name] = value
    if "max_steps" in spec and spec["max_steps"] == 0:  # (a refused value holds the default 0: said already)
        p.invalid.append("max_steps: 0 must be > 0 (leave it unset to train by epochs)")
    if values["packing"] and values["group_by_length"]:
        p.invalid.append("group_by_length: packing already removes padding; set packing false to group by length")
    if values["training_quant"] != "none" and values["dtype"] != "auto":
        p.invalid.append(f"dtype: {values['training_quant']} sets its own compute dtype "
                         "(NF4 with bf16 compute; int8 with the device's); leave dtype at auto")
    for name in ("output_name", "task"):  # names, checked as names here (not first by the storage layer)
        if values[name]:
            p.add(check_name(name, values[name]))
    # the adapter is checked even when the method is unknown (as LoRA's)
    method = PEFT_METHODS.get(values["peft_method"], PEFT_METHODS[PARAMS["peft_method"].default])
    block = spec.get("lora") or {}
    if not isinstance(block, dict):
        p.invalid.append(f"lora: {quote(block)} must be a mapping of adapter fields")
        block = {}
    adapter = _adapter(p, block, method)
    cfg = TrainConfig(adapter=adapter, device_type=device_type or devices.device_type(), **values)
    if (chosen := PEFT_METHODS.get(values["peft_method"])) and chosen.spec_problems:  # settings it cannot train with
        p.add(chosen.spec_problems(cfg))
    if not values["output_name"] and values["base_model"] and not p.invalid:
        cfg = dataclasses.replace(cfg, output_name=model_name(cfg))
    return cfg


DTYPE_TAGS = {"float32": "fp32", "bfloat16": "bf16"}


def model_name(cfg: TrainConfig) -> str:
    """The study's name of a valid config: ``{base stem}-{dataset}_SFT_{tag}{r}_{quant tag}``
    (``Qwen3-8B-arc_SFT_LoRa256_NoQuant``; full fine-tuning ``..._NoPeft_...``). A dtype set
    explicitly is named too (``..._SFT_LoRa8_bf16_NoQuant``), so a dtype sweep gets one model each."""
    peft_tag = cfg.method.tag
    r = cfg.adapter and cfg.adapter.r
    if cfg.dtype != "auto":
        peft_tag, r = f"{peft_tag}{r if r is not None else ''}_{DTYPE_TAGS[cfg.dtype]}", None
    return trained_model_name(cfg.base_model, cfg.dataset, peft_tag, r, cfg.quant)


def resolve_train_spec(spec: dict[str, Any], store: ObjectStore) -> dict[str, Any]:
    """The trainer's door: :meth:`TrainConfig.resolve` plus what storage says (base model and
    dataset exist, the dataset's task and columns, the output is new), the device's preconditions
    (GPU-only optimizers, bf16) and the memory estimate against FTLAB_DEVICE_MEMORY_GB.
    Returns the config as the job record stores it (:meth:`TrainConfig.to_dict`). Raises
    ValidationError (every problem), NotFoundError or PreconditionError; writes nothing."""
    p = Problems()
    cfg = _resolve(p, spec, None)
    base, dataset = cfg.base_model, cfg.dataset
    # looked up whenever the name itself is valid, so a missing model is listed with the other problems
    base_ok, dataset_ok = (bool(n) and not check_name("n", n) for n in (base, dataset))
    base_manifest = artifacts.read_manifest(store, "models", base) if base_ok else None
    if base_ok and base_manifest is None:
        p.not_found(f"base_model: model {base!r} not found in the models bucket" + held(store, "models"))
    weights = model_weights_problem("base_model", base, base_manifest, "training") if base_manifest else None
    ds_manifest = artifacts.read_manifest(store, "datasets", dataset) if dataset_ok else None
    if dataset_ok and ds_manifest is None:
        p.not_found(f"dataset: {dataset!r} not found in the datasets bucket" + held(store, "datasets"))
    task_name = cfg.task
    if ds_manifest is not None:
        if task_name:  # the requested task must be the one the dataset was imported for
            p.add(task_mismatch("task", task_name, dataset, ds_manifest))
        task_name = task_name or ds_manifest.get("task", "")
        if "train" not in ds_manifest.get("splits", {}):
            p.stored(f"dataset: {dataset!r} has no train split")
        else:
            p.add(split_rows("train_limit" if cfg.train_limit else "dataset", dataset, ds_manifest, "train",
                             cfg.train_limit))
    if task_name or ds_manifest is not None:  # else no task to infer: the dataset's problem is reported
        try:
            task = get_task(task_name or dataset)
            cfg = dataclasses.replace(cfg, task=task.name)
            if ds_manifest is not None:
                cols = set(ds_manifest.get("splits", {}).get("train", {}).get("columns", []))
                missing = [c for c in required_columns(task) if c not in cols]
                if missing:
                    p.stored(f"dataset: {dataset!r} lacks the {task.name} columns {missing}")
        except ValidationError as exc:
            p.invalid.append(f"task: {exc}")
    p.raise_if_any()
    if weights:
        raise PreconditionError(weights)

    _check_preconditions(cfg)
    if artifacts.read_manifest(store, "models", cfg.output_name) is not None:
        raise PreconditionError(f"output model {cfg.output_name!r} already exists; choose another output_name "
                                "or delete it first")
    cfg = dataclasses.replace(cfg, checkpoint_prefix=f"{CHECKPOINTS_PREFIX}/{cfg.output_name}-{cfg.run_key()}")
    est = estimate_at_submit(cfg, store)
    cfg = dataclasses.replace(cfg, memory_estimate=est, memory_estimate_gb=est["total_gb"] if est else 0.0)
    budget = device_budget_gb()
    if est and budget is not None and est["total_gb"] > budget:
        parts = ", ".join(f"{k[:-3]} {v:.2f}" for k, v in est.items() if k.endswith("_gb") and k != "total_gb")
        raise PreconditionError(
            f"estimated training memory {est['total_gb']:.2f} GiB per device exceeds the device budget "
            f"FTLAB_DEVICE_MEMORY_GB={budget:g} ({parts} GiB); lower per_device_batch_size or max_seq_length, "
            "enable gradient_checkpointing, use training_quant qlora, or a smaller r")
    return cfg.to_dict()


def _check_preconditions(cfg: TrainConfig) -> None:
    """Well-formed requests that this trainer's device cannot run, each with the reason
    (FAILED_PRECONDITION); a method's own incompatible settings are the spec's problems (_resolve)."""
    reasons = []
    if cfg.dtype == "bfloat16" and cfg.device_type == "cpu" and not cpu_has_bf16():
        reasons.append("dtype 'bfloat16': this CPU has no native bf16 (AVX512-BF16 or AMX); torch would "
                       "emulate it, slower than fp32: use auto (fp32 on this CPU)")
    if cfg.optimizer in GPU_ONLY_OPTIMIZERS and cfg.device_type != "cuda":
        reasons.append(f"optimizer {cfg.optimizer!r} needs a CUDA GPU (bitsandbytes' 8-bit optimizer "
                       "kernels); this trainer runs on CPU: use adamw_torch, adafactor or sgd")
    if reasons:
        raise PreconditionError("; ".join(reasons))


def estimate_at_submit(cfg: TrainConfig, store: ObjectStore | None) -> dict[str, float] | None:
    """The memory estimate of a resolved config before any data is read (GiB by component, see
    services/trainer/memory.py), from the base's config.json in ``store`` or the Qwen3 catalogue;
    None when neither describes the model. The door and ``ftlab run --dry-run`` both call this."""
    from services.trainer.memory import estimate_training_memory, model_config_for
    try:
        model_config = model_config_for(cfg.base_model, store)
    except NotFoundError:
        return None
    try:
        return estimate_training_memory(model_config, cfg)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):  # a config.json this estimator can't read
        return None
