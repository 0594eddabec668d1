"""Experiment specs (YAML): what to train, quantize and evaluate. Loading validates the whole
file and reports every problem at once; planning expands it into the jobs of each stage."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import NotFoundError, ValidationError
from services.common.jobs import spec_hash
from services.common.naming import QuantMethod, check_name, quantized_model_name, trained_model_name

EXPERIMENTS_DIR = Path(__file__).parent / "experiments"
TOP_KEYS = {"name", "description", "base_models", "datasets", "train", "quantize", "evaluate", "timeouts_s"}
QUANT_METHODS = {"bnb_int8": QuantMethod.INT8}  # must match services/quantizer/spec.py METHODS


@dataclass
class Step:
    stage: str                 # train | quantize | evaluate
    service: str               # trainer | quantizer | evaluator
    spec: dict[str, Any]       # the proto spec as JSON
    output: str                # model name (train/quantize) or "model/eval_id" (evaluate)
    after: list[str] = field(default_factory=list)  # outputs this step needs

    @property
    def key(self) -> str:
        return f"{self.stage}:{self.output}"

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

    def stage(self, stage: str) -> list[Step]:
        return [s for s in self.steps if s.stage == stage]


def resolve_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise NotFoundError(f"experiment file {p} not found")
        return p
    shipped = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if not shipped.exists():
        known = ", ".join(sorted(x.stem for x in EXPERIMENTS_DIR.glob("*.yaml")))
        raise NotFoundError(f"no experiment {name_or_path!r}; shipped: {known}; or give a path to a .yaml file")
    return shipped


def load(name_or_path: str) -> Experiment:
    path = resolve_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValidationError(f"{path}: not valid YAML: {exc}") from None
    return plan(raw, str(path))


def _list(p: list[str], raw: dict, key: str) -> list:
    v = raw.get(key, [])
    if not isinstance(v, list):
        p.append(f"{key}: must be a list")
        return []
    return v


def plan(raw: Any, source: str = "<spec>") -> Experiment:
    p: list[str] = []
    if not isinstance(raw, dict):
        raise ValidationError(f"{source}: an experiment is a mapping")
    p += [f"unknown key {k!r} (known: {', '.join(sorted(TOP_KEYS))})" for k in raw if k not in TOP_KEYS]
    name = raw.get("name", "")
    p += check_name("name", name) if isinstance(name, str) else ["name: must be a string"]
    bases, datasets, trains = _list(p, raw, "base_models"), _list(p, raw, "datasets"), _list(p, raw, "train")
    p.append("base_models: at least one") if not bases else None
    for i, b in enumerate(bases):
        p += check_name(f"base_models[{i}]", str(b))
    for i, d in enumerate(datasets):
        p += check_name(f"datasets[{i}]", str(d))
    quant = raw.get("quantize") or {}
    methods = quant.get("methods", []) if isinstance(quant, dict) else []
    p += [f"quantize.methods: unknown {m!r}; known: {', '.join(QUANT_METHODS)}" for m in methods if m not in QUANT_METHODS]
    ev = raw.get("evaluate") or {}
    if not isinstance(ev, dict):
        p.append("evaluate: must be a mapping")
        ev = {}
    ev_tasks = ev.get("tasks", [])
    p.append("evaluate.tasks: at least one task") if not ev_tasks else None
    timeouts = {"train": 3600.0, "quantize": 1800.0, "evaluate": 3600.0, **(raw.get("timeouts_s") or {})}
    for i, t in enumerate(trains):
        if not isinstance(t, dict):
            p.append(f"train[{i}]: must be a mapping of TrainSpec fields")
        elif {"base_model", "dataset"} & set(t):
            p.append(f"train[{i}]: base_model/dataset come from base_models x datasets, not the config")
    if p:
        raise ValidationError([f"{source}: {x}" for x in p])

    steps: list[Step] = []
    trained: list[str] = []
    for base, dataset, t in itertools.product(bases, datasets, trains):
        spec = {"base_model": base, "dataset": dataset, **t}
        peft = t.get("peft_method", "lora")
        r = (t.get("lora") or {}).get("r", 8)
        out = t.get("output_name") or trained_model_name(base, dataset, peft, r, QuantMethod.NO_QUANT)
        steps.append(Step("train", "trainer", spec, out, [base]))
        trained.append(out)
    quantized = []
    for src, m in itertools.product(trained, methods):
        out = quantized_model_name(src, QUANT_METHODS[m])
        steps.append(Step("quantize", "quantizer", {"source_model": src, "method": m}, out, [src]))
        quantized.append(out)
    models = (list(bases) if ev.get("include_base", True) else []) + trained + quantized
    for model in models:
        spec = {"model": model, "tasks": ev_tasks,
                **{k: ev[k] for k in ("batch_size", "max_new_tokens", "seed") if k in ev}}
        eval_id = f"{name}-{spec_hash(spec)[:10]}"
        spec["eval_id"] = eval_id
        steps.append(Step("evaluate", "evaluator", spec, f"{model}/{eval_id}", [model]))
    return Experiment(name, raw.get("description", ""), raw, steps, timeouts)
