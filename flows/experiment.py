"""Experiment specs (YAML): what to train, quantize and evaluate. Loading validates the whole
file and reports every problem at once; planning expands it into the steps of each stage.

A spec (see flows/experiments/*.yaml and docs/FLOWS.md)::

    name: phase2
    base_models: [Qwen3-1.7B-base]          # trained, and evaluated unless evaluate.include_base: false
    datasets: [arc, squad, openmath]        # training datasets
    data: {source: seed, path: ../shared/datasets/seed}   # where missing datasets are imported from
    defaults: {num_train_epochs: 1, ...}    # TrainSpec fields under every training configuration
    train:                                  # configurations; a list value expands into a matrix
      - {peft_method: [lora, dora], lora: {r: 256}}
      - {peft_method: vera, lora: {r: [512, 1024]}, base_models: [Qwen3-1.7B-base]}
    exclude: [{peft_method: dora, dataset: squad}]   # rules on the expanded jobs (include: too)
    quantize:                               # post-training quantization of chosen models
      - {methods: [bnb_int8], sources: [base, trained], where: {base_model: Qwen3-1.7B-base}}
    evaluate: {tasks: [{task: ai2_arc, limit: 200}], models: [Qwen3-8B-base], batch_size: 8}

Model names follow the study (services/common/naming.py); request ids are derived from the
experiment and each step's spec hash, so a rerun resubmits the same requests."""
from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from services.common.clients import parse_error_text, proto_json
from services.common.errors import NotFoundError, ValidationError
from services.common.generated.ftlab.v1 import evaluate_spec_pb2, quantize_spec_pb2, train_spec_pb2
from services.common.job_record import spec_hash
from services.common.naming import check_name
from services.common.tasks import get_task
from services.quantizer.config import METHODS as QUANT_METHODS
from services.quantizer.config import default_output_name
from services.quantizer.config import spec_problems as ptq_spec_problems
from services.common.validation import Problems
from services.evaluator.config import PARAMS as EVAL_PARAMS
from services.trainer.config import TrainConfig

EXPERIMENTS_DIR = Path(__file__).parent / "experiments"
TOP_KEYS = {"name", "description", "base_models", "datasets", "data", "defaults", "train", "include", "exclude",
            "quantize", "evaluate", "timeouts_s"}
TRAIN_ONLY_KEYS = {"base_models", "datasets"}  # per-configuration restrictions, not TrainSpec fields
QUANT_KEYS = {"methods", "sources", "where", "options"}
QUANT_SOURCES = ("trained", "base")
EVAL_KEYS = {"tasks", "include_base", "models", "limit", "batch_size", "max_new_tokens", "seed"}
DATA_SOURCES = ("seed", "hf", "hub")
STAGE_TIMEOUTS = {"train": 24 * 3600.0, "quantize": 4 * 3600.0, "evaluate": 12 * 3600.0}


@dataclass
class Step:
    stage: str                 # train | quantize | evaluate
    service: str               # trainer | quantizer | evaluator
    spec: dict[str, Any]       # the proto spec as JSON
    output: str                # model name (train/quantize) or "model/eval_id" (evaluate)
    after: list[str] = field(default_factory=list)   # models this step needs
    labels: dict[str, Any] = field(default_factory=dict)  # what the report groups by (method, rank, ...)

    @property
    def key(self) -> str:
        return f"{self.stage}:{self.output}"

    @property
    def bucket(self) -> str:
        return "evaluations" if self.stage == "evaluate" else "models"

    def request_id(self, experiment: str) -> str:
        """Deterministic: a rerun resubmits the same request and gets the same job back."""
        return f"{experiment}:{self.stage}:{spec_hash(self.spec)}"


@dataclass
class Experiment:
    name: str
    description: str
    raw: dict[str, Any]
    steps: list[Step]
    timeouts_s: dict[str, float]
    datasets: list[str]                 # every dataset a step reads (training + evaluation)
    data: dict[str, Any] | None         # {source, path}: where missing datasets are imported from
    source: str = ""

    def stage(self, stage: str) -> list[Step]:
        return [s for s in self.steps if s.stage == stage]

    @property
    def inputs(self) -> list[str]:
        """Models the plan reads but does not produce (base models, extra evaluated models)."""
        produced = {s.output for s in self.steps}
        return list(dict.fromkeys(d for s in self.steps for d in s.after if d not in produced))


def _check_prepare(prepare: Any) -> list[str]:
    """data.prepare: {dataset name: recipe (shipped name or YAML path)}; each recipe is validated
    here, its source files only when the step runs (they may live on the GPU host)."""
    if prepare is None:
        return []
    if not isinstance(prepare, dict) or not prepare:
        return ["data.prepare: must map dataset names to recipes (e.g. {arc: study-arc})"]
    from services.common.data_prepare import load_recipe
    p = []
    for name, recipe in prepare.items():
        p += check_name(f"data.prepare.{name}", str(name))
        try:
            load_recipe(str(recipe), check_sources=False)
        except (ValidationError, NotFoundError) as exc:
            p += [f"data.prepare.{name}: {x}" for x in getattr(exc, "problems", [str(exc)])]
    return p


def resolve_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise NotFoundError(f"experiment file {p} not found")
        return p
    shipped = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if not shipped.exists():
        raise NotFoundError(f"no experiment {name_or_path!r}; shipped: {', '.join(shipped_names())}; "
                            "or give a path to a .yaml file")
    return shipped


def shipped_names() -> list[str]:
    return sorted(x.stem for x in EXPERIMENTS_DIR.glob("*.yaml"))


def load(name_or_path: str) -> Experiment:
    path = resolve_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValidationError(f"{path}: not valid YAML: {exc}") from None
    return plan(raw, str(path))


# ----------------------------------------------------------------------------- matrix expansion

def expand(config: dict[str, Any], descriptor=train_spec_pb2.TrainSpec.DESCRIPTOR) -> list[dict[str, Any]]:
    """Every combination of the list-valued fields: ``{lora: {r: [32, 64]}, seed: [0, 1]}`` gives 4.
    A repeated proto field (``lora.target_modules``) is a value, not an axis, unless it is a list of
    lists."""
    axes: list[list[Any]] = []
    keys: list[str] = []
    for k, v in config.items():
        fd = descriptor.fields_by_name.get(k) if descriptor is not None else None
        repeated = fd is not None and fd.is_repeated
        if isinstance(v, dict):
            options = expand(v, fd.message_type if fd is not None and fd.message_type else None)
        elif isinstance(v, list) and (not repeated or (v and all(isinstance(x, list) for x in v))):
            options = list(v)
        else:
            options = [v]
        keys.append(k)
        axes.append(options)
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def matches(rule: dict[str, Any], fields: dict[str, Any]) -> bool:
    """A rule matches when every field equals its value (or one of its values, for a list).
    Dotted keys reach into nested fields (``lora.r``)."""
    for k, want in rule.items():
        have = _get(fields, k)
        if have is None or have not in (want if isinstance(want, list) else [want]):
            return False
    return True


# ----------------------------------------------------------------------------- validation + plan

def _list(p: list[str], raw: dict, key: str) -> list:
    v = raw.get(key, [])
    if v is None:
        return []
    if not isinstance(v, list):
        p.append(f"{key}: must be a list")
        return []
    return v


def _mapping(p: list[str], value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        p.append(f"{where}: must be a mapping")
        return {}
    return value


def _rules(p: list[str], raw: dict, key: str) -> list[dict]:
    rules = _list(p, raw, key)
    for i, r in enumerate(rules):
        if not isinstance(r, dict) or not r:
            p.append(f"{key}[{i}]: a rule is a non-empty mapping of field -> value(s)")
    return [r for r in rules if isinstance(r, dict) and r]


def _proto_problems(where: str, spec: dict, message) -> list[str]:
    try:
        json_format.ParseDict(proto_json(spec), message(), ignore_unknown_fields=False)
        return []
    except json_format.ParseError as exc:
        text = parse_error_text(exc, message)
        return [f"{where}.{text}" if re.match(r"^[a-z_.]+: ", text) else f"{where}: {text}"]


def as_sent(message, spec: dict[str, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """``spec`` as the service reads it: through the proto message and back to JSON (YAML's
    ``1e-4`` is a string, ints become floats where the field is a double), less ``drop``."""
    parsed = json_format.ParseDict(proto_json({k: v for k, v in spec.items() if k not in drop}), message())
    return json_format.MessageToDict(parsed, preserving_proto_field_name=True)


def _known(d: dict | list | tuple) -> str:
    return ", ".join(d)


def plan(raw: Any, source: str = "<spec>") -> Experiment:
    p: list[str] = []
    if not isinstance(raw, dict):
        raise ValidationError(f"{source}: an experiment is a mapping")
    p += [f"unknown key {k!r} (known: {', '.join(sorted(TOP_KEYS))})" for k in raw if k not in TOP_KEYS]
    name = raw.get("name", "")
    p += check_name("name", name) if isinstance(name, str) else ["name: must be a string"]
    bases, datasets = _list(p, raw, "base_models"), _list(p, raw, "datasets")
    trains = _list(p, raw, "train")
    if not bases and trains:
        p.append("base_models: at least one when there is a train section")
    for i, b in enumerate(bases):
        p += check_name(f"base_models[{i}]", str(b))
    for i, d in enumerate(datasets):
        p += check_name(f"datasets[{i}]", str(d))
    if trains and not datasets:
        p.append("datasets: at least one when there is a train section")
    defaults = _mapping(p, raw.get("defaults"), "defaults")
    includes, excludes = _rules(p, raw, "include"), _rules(p, raw, "exclude")

    data = raw.get("data")
    if data is not None:
        data = _mapping(p, data, "data")
        p += [f"data: unknown key {k!r} (known: path, prepare, source)" for k in data
              if k not in ("source", "path", "prepare")]
        if data.get("source", "seed") not in DATA_SOURCES:
            p.append(f"data.source: unknown {data.get('source')!r}; known: {_known(DATA_SOURCES)}")
        imports = "source" in data or "path" in data or "prepare" not in data
        if imports and data.get("source", "seed") != "hub" and not data.get("path"):
            p.append("data.path: required for the seed and hf sources")
        p += _check_prepare(data.get("prepare"))

    timeouts = dict(STAGE_TIMEOUTS)
    for k, v in _mapping(p, raw.get("timeouts_s"), "timeouts_s").items():
        if k not in STAGE_TIMEOUTS:
            p.append(f"timeouts_s: unknown stage {k!r}; known: {_known(STAGE_TIMEOUTS)}")
        elif not isinstance(v, (int, float)) or v <= 0:
            p.append(f"timeouts_s.{k}: {v!r} must be a number of seconds > 0")
        else:
            timeouts[k] = float(v)

    # --- train: configurations x base models x datasets, filtered by include/exclude
    steps: list[Step] = []
    trained: list[Step] = []
    for i, t in enumerate(trains):
        where = f"train[{i}]"
        if not isinstance(t, dict):
            p.append(f"{where}: must be a mapping of TrainSpec fields")
            continue
        if {"base_model", "dataset"} & set(t):
            p.append(f"{where}: base_model/dataset come from base_models x datasets "
                     "(restrict with base_models: [...] / datasets: [...] in the configuration)")
            continue
        t_bases = t.get("base_models", bases)
        t_datasets = t.get("datasets", datasets)
        for key, subset, full in (("base_models", t_bases, bases), ("datasets", t_datasets, datasets)):
            if not isinstance(subset, list) or any(x not in full for x in subset):
                p.append(f"{where}.{key}: {subset!r} must be a list drawn from the top-level {key} {full}")
        config = _deep_merge(defaults, {k: v for k, v in t.items() if k not in TRAIN_ONLY_KEYS})
        combos = expand(config)
        for combo, base, dataset in itertools.product(combos, t_bases if isinstance(t_bases, list) else [],
                                                      t_datasets if isinstance(t_datasets, list) else []):
            spec = {"base_model": base, "dataset": dataset, **combo}
            if (includes and not any(matches(r, spec) for r in includes)) or any(matches(r, spec) for r in excludes):
                continue
            bad = _proto_problems(where, spec, train_spec_pb2.TrainSpec)
            try:  # the trainer's own checks and name (its door adds only what storage says)
                cfg = TrainConfig.resolve({k: v for k, v in spec.items() if k != "output_name"} if bad else
                                          as_sent(train_spec_pb2.TrainSpec, spec, drop=("output_name",)))
            except ValidationError as exc:
                bad += [f"{where}.{x}" for x in exc.problems]
            if bad:
                p += [b for b in bad if b not in p]
                continue
            r = cfg.adapter.r if cfg.adapter else None
            out = cfg.output_name
            if spec.get("output_name"):
                out = str(spec["output_name"]).replace("{name}", out)
                p += check_name(f"{where}.output_name", out)
            spec["output_name"] = out
            labels = {"base_model": base, "dataset": dataset, "peft_method": cfg.peft_method, "rank": r,
                      "training_quant": cfg.training_quant}
            trained.append(Step("train", "trainer", spec, out, [base], labels))
    steps += trained

    # --- post-training quantization of chosen trained outputs and/or base models
    quant = raw.get("quantize")
    q_entries = [quant] if isinstance(quant, dict) else _list(p, raw, "quantize")
    quantized: list[Step] = []
    for i, q in enumerate(q_entries):
        where = f"quantize[{i}]" if isinstance(quant, list) else "quantize"
        if not isinstance(q, dict):
            p.append(f"{where}: must be a mapping (methods, sources, where, options)")
            continue
        p += [f"{where}: unknown key {k!r} (known: {_known(sorted(QUANT_KEYS))})" for k in q if k not in QUANT_KEYS]
        methods = q.get("methods") or []
        if not methods:
            p.append(f"{where}.methods: at least one")
        p += [f"{where}.methods: unknown {m!r}; known: {_known(QUANT_METHODS)}" for m in methods
              if m not in QUANT_METHODS]
        sources = q.get("sources", ["trained"])
        p += [f"{where}.sources: unknown {s!r}; known: {_known(QUANT_SOURCES)}" for s in sources
              if s not in QUANT_SOURCES]
        rule = _mapping(p, q.get("where"), f"{where}.where")
        options = _mapping(p, q.get("options"), f"{where}.options")
        candidates = [(s.output, s.labels) for s in trained] if "trained" in sources else []
        if "base" in sources:
            candidates += [(b, {"base_model": b}) for b in bases]
        valid = []  # methods whose options the quantizer accepts (checked once, with or without sources)
        for m in methods:
            if m not in QUANT_METHODS:
                continue
            probe = {"source_model": "source", "method": m, **options}
            bad = _proto_problems(where, probe, quantize_spec_pb2.QuantizeSpec)
            if not bad:  # the quantizer's own checks (no storage) before naming the step
                bad = [f"{where}.{x}" for x in ptq_spec_problems(as_sent(quantize_spec_pb2.QuantizeSpec, probe))]
            p += [b for b in bad if b not in p]
            if not bad:
                valid.append(m)
        for src, labels in candidates:
            if not matches(rule, labels):
                continue
            for m in valid:
                spec = {"source_model": src, "method": m, **options}
                out = default_output_name(spec)  # the study's tag with the step's options (GPTQ_w4_g64_...)
                spec["output_name"] = out
                quantized.append(Step("quantize", "quantizer", spec, out, [src],
                                      {**labels, "ptq_method": m, "source_model": src}))
    steps += quantized

    # --- evaluation of base models, extra models, trained and quantized outputs
    ev = _mapping(p, raw.get("evaluate"), "evaluate")
    p += [f"evaluate: unknown key {k!r} (known: {_known(sorted(EVAL_KEYS))})" for k in ev if k not in EVAL_KEYS]
    ev_tasks = []
    for i, t in enumerate(ev.get("tasks") or []):
        item = {"task": t} if isinstance(t, str) else t
        if not isinstance(item, dict):
            p.append(f"evaluate.tasks[{i}]: a task name or a mapping (task, limit, dataset, split)")
            continue
        item = {**({"limit": ev["limit"]} if "limit" in ev else {}), **item}
        if isinstance(item.get("limit"), int):  # the evaluator's door ranges, checked here for the whole file at once
            EVAL_PARAMS["tasks.limit"].read(limit_problems := Problems(), item)
            p += [f"evaluate.tasks[{i}].limit:" + x.split(":", 1)[1] for x in limit_problems.invalid]
        try:
            item["task"] = get_task(item.get("task", "")).name
        except ValidationError as exc:
            p.append(f"evaluate.tasks[{i}].task: {exc}")
        ev_tasks.append(item)
    if "evaluate" in raw and not ev_tasks:  # no evaluate section: train/quantize only
        p.append("evaluate.tasks: at least one task")
    for key in ("batch_size", "max_new_tokens"):
        if isinstance(ev.get(key), int):
            EVAL_PARAMS[key].read(ranges := Problems(), ev)
            p += [f"evaluate.{x}" for x in ranges.invalid]
    extra = _list(p, ev, "models")
    for i, m in enumerate(extra):
        p += check_name(f"evaluate.models[{i}]", str(m))
    models = list(dict.fromkeys((bases if ev.get("include_base", True) else []) + extra))
    evaluated = [(m, {"base_model": m}) for m in models] + [(s.output, s.labels) for s in trained + quantized]
    if not ev_tasks:  # no evaluate section: nothing to evaluate
        evaluated = []
    for model, labels in evaluated:
        spec = {"model": model, "tasks": ev_tasks,
                **{k: ev[k] for k in ("batch_size", "max_new_tokens", "seed") if k in ev}}
        bad = _proto_problems("evaluate", spec, evaluate_spec_pb2.EvaluateSpec)
        if bad:
            p += [b for b in bad if b not in p]
            continue
        spec["eval_id"] = f"{name}-{spec_hash(spec)[:10]}"
        steps.append(Step("evaluate", "evaluator", spec, f"{model}/{spec['eval_id']}", [model],
                          {**labels, "model": model}))

    seen: dict[str, int] = {}
    for s in steps:
        seen[s.key] = seen.get(s.key, 0) + 1
    p += [f"two configurations produce the same step {k!r} (differ them with output_name: '{{name}}-...')"
          for k, n in seen.items() if n > 1]
    if not steps and not p:
        p.append("the plan is empty (check include/exclude and the evaluate section)")
    if p:
        raise ValidationError([f"{source}: {x}" for x in p])
    needed = list(dict.fromkeys([s.spec["dataset"] for s in trained]
                                + [t.get("dataset") or get_task(t["task"]).short for t in ev_tasks]))
    return Experiment(str(name), raw.get("description", ""), raw, steps, timeouts, needed, data, source)
