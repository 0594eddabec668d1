"""The experiment file's schema, typed: ``ExperimentSpec.parse(raw, problems)`` checks every section
of an experiment YAML (docs/FLOWS.md) and returns dataclasses the planner (``flows/experiment.py``)
reads; every problem is appended to ``problems`` (nothing raised), so one run reports them all.

Only the file's own shape is checked here: names, lists, mappings, known keys, stage timeouts, data
recipes, quantization methods and their options (the quantizer's own checks, no storage), task
names and the evaluator's ranges. What needs a configuration expanded (the trainer's checks of each
TrainSpec, the evaluator's proto) is checked by the planner as it builds each step.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from services.common.rpc.clients import parse_error_text, proto_json
from services.common.contract.errors import NotFoundError, ValidationError
from services.common.generated.ftlab.v1 import quantize_spec_pb2
from services.common.contract.naming import check_name
from services.common.data.tasks import get_task
from services.common.contract.validation import Problems
from services.evaluator.config import PARAMS as EVAL_PARAMS
from services.quantizer.config import METHODS as QUANT_METHODS
from services.quantizer.config import spec_problems as ptq_spec_problems

TOP_KEYS = {"name", "description", "base_models", "datasets", "data", "defaults", "train", "include", "exclude",
            "quantize", "evaluate", "timeouts_s", "seeds", "lr_sweep", "verdicts"}  # flows/selection.py, flows/report_verdicts.py
TRAIN_ONLY_KEYS = {"base_models", "datasets"}  # per-configuration restrictions, not TrainSpec fields
QUANT_KEYS = {"methods", "sources", "where", "options"}
QUANT_SOURCES = ("trained", "base")
EVAL_KEYS = {"tasks", "include_base", "models", "limit", "batch_size", "max_new_tokens", "seed"}
EVAL_SETTINGS = ("batch_size", "max_new_tokens", "seed")  # copied into every EvaluateSpec
DATA_SOURCES = ("seed", "hf", "hub")
DATA_KEYS = ("source", "path", "prepare")
FLAG_SEEDS = "--seed"  # a problem that starts with a flag is the command line's: not prefixed with the file
STAGE_TIMEOUTS = {"train": 24 * 3600.0, "quantize": 4 * 3600.0, "evaluate": 12 * 3600.0}


@dataclass(frozen=True)
class TrainEntry:
    """One ``train:`` configuration: TrainSpec fields over ``defaults`` (list values are matrix
    axes), crossed with its base models and datasets."""
    where: str                      # "train[0]": where its problems point
    config: dict[str, Any]          # defaults deep-merged with the entry's TrainSpec fields
    base_models: list[Any]
    datasets: list[Any]
    defaulted: frozenset[str] = frozenset()  # dotted fields whose value is defaults' (the entry leaves them)
    own: frozenset[str] = frozenset()        # the fields the entry sets itself (dotted, and each part)

    def blame(self, problem: str) -> str:
        """A problem of one of this entry's steps (``train[0].lr: ...``), pointed at ``defaults.lr``
        when the entry takes that field from ``defaults`` and the problem names no field the entry
        sets (``lora: ... but peft_method is 'none'`` stays the entry's): one bad default is one
        problem, not one per entry (the planner drops the repeats)."""
        m = re.match(re.escape(self.where) + r"(?:\.([\w.]+))?: (.*)", problem, re.S)
        if m is None:
            return problem
        path = m.group(1) or next(iter(re.findall(r"^Failed to parse (\w+) field", m.group(2))), "")
        parts = path.split(".")
        if (path and any(".".join(parts[:n]) in self.defaulted for n in range(1, len(parts) + 1))
                and not any(re.search(rf"\b{re.escape(k)}\b", re.sub(r"\(?known:[^)]*\)?", "", m.group(2)))
                            for k in self.own)):  # a list of the known fields blames none
            return f"defaults.{path}: {m.group(2)}" if m.group(1) else f"defaults: {m.group(2)}"
        return problem


@dataclass(frozen=True)
class QuantizeEntry:
    """One ``quantize:`` entry: ``methods`` (those whose ``options`` the quantizer accepts) applied to
    the ``sources`` (trained outputs and/or base models) whose labels match ``rule``."""
    where: str
    methods: list[str]
    sources: list[str]
    rule: dict[str, Any]
    options: dict[str, Any]


@dataclass(frozen=True)
class EvaluateSection:
    """``evaluate:``: every task item (``limit`` folded in, the task's registered name), the models
    evaluated besides the planned outputs (base models unless ``include_base: false``, then
    ``models``), and the settings every EvaluateSpec carries."""
    tasks: list[dict[str, Any]]
    models: list[Any]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExperimentSpec:
    name: Any
    description: str
    base_models: list[Any]
    datasets: list[Any]
    include: list[dict[str, Any]]
    exclude: list[dict[str, Any]]
    data: dict[str, Any] | None
    timeouts_s: dict[str, float]
    train: list[TrainEntry]
    quantize: list[QuantizeEntry]
    evaluate: EvaluateSection
    seeds: list[int] = field(default_factory=list)  # replication: each configuration once per seed

    @classmethod
    def parse(cls, raw: dict[str, Any], p: list[str], seeds: list[int] | None = None) -> "ExperimentSpec":
        """The typed spec of ``raw`` (a mapping); problems appended to ``p``, section by section.
        ``seeds`` (``ftlab run --seed``) replaces the file's ``seeds:``; its problems name the flag."""
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
        include, exclude = _rules(p, raw, "include"), _rules(p, raw, "exclude")
        data = _data(p, raw.get("data"))
        timeouts = _timeouts(p, raw.get("timeouts_s"))
        train = [e for i, t in enumerate(trains) if (e := _train_entry(p, i, t, defaults, bases, datasets))]
        quant = raw.get("quantize")
        q_entries = [quant] if isinstance(quant, dict) else _list(p, raw, "quantize")
        quantize = [e for i, q in enumerate(q_entries)
                    if (e := _quantize_entry(p, f"quantize[{i}]" if isinstance(quant, list) else "quantize", q))]
        evaluate = _evaluate(p, raw, bases)
        seeds = _seeds(p, raw.get("seeds"), trains) if not seeds else _seeds(p, list(seeds), trains, FLAG_SEEDS)
        return cls(name, raw.get("description", ""), bases, datasets, include, exclude, data, timeouts, train,
                   quantize, evaluate, seeds)


# ----------------------------------------------------------------------------- sections

def _seeds(p: list[str], seeds: Any, trains: list, where: str = "seeds") -> list[int]:
    """``seeds: [1, 2, 3]``: every training configuration once per seed (the trainer's ``seed``
    range), replacing ``defaults.seed``; a configuration that sets ``seed`` itself would be
    ambiguous, so it is refused. ``where``: ``seeds`` (the file's) or ``--seed`` (the command
    line's, whose problems are the flag's, not the file's)."""
    if seeds is None:
        return []
    listed = isinstance(seeds, list)
    shown = " ".join(f"--seed {x}" for x in seeds) if where == FLAG_SEEDS else f"seeds: {seeds}"
    ok = listed and seeds and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**31 for x in seeds)
    if not ok:  # then the seeds' other problems too: every problem in one answer
        p.append(f"{where}: {seeds!r} must be a non-empty list of integers in [0, 2**31)" if where != FLAG_SEEDS
                 else f"{where}: {', '.join(str(x) for x in seeds if not 0 <= x < 2**31)} must be in [0, 2**31)")
    if listed and any(x in seeds[:i] for i, x in enumerate(seeds)):
        p.append(f"{shown} gives a seed twice" if where == FLAG_SEEDS else f"{where}: {seeds} gives a seed twice")
    p += [f"train[{i}].seed: set here and by {shown}; give the seeds in one place ({where} replicates "
          "every configuration)" for i, t in enumerate(trains) if isinstance(t, dict) and "seed" in t]
    return list(dict.fromkeys(seeds)) if ok else []


def _data(p: list[str], data: Any) -> dict[str, Any] | None:
    """``data:`` as given (the flow reads it), checked: where missing datasets come from."""
    if data is None:
        return None
    data = _mapping(p, data, "data")
    p += [f"data: unknown key {k!r} (known: path, prepare, source)" for k in data if k not in DATA_KEYS]
    if data.get("source", "seed") not in DATA_SOURCES:
        p.append(f"data.source: unknown {data.get('source')!r}; known: {_known(DATA_SOURCES)}")
    imports = "source" in data or "path" in data or "prepare" not in data
    if imports and data.get("source", "seed") != "hub" and not data.get("path"):
        p.append("data.path: required for the seed and hf sources")
    p += _check_prepare(data.get("prepare"))
    return data


def _check_prepare(prepare: Any) -> list[str]:
    """data.prepare: {dataset name: recipe (shipped name or YAML path)}; each recipe is validated
    here, its source files only when the step runs (they may live on the GPU host)."""
    if prepare is None:
        return []
    if not isinstance(prepare, dict) or not prepare:
        return ["data.prepare: must map dataset names to recipes (e.g. {arc: study-arc})"]
    from services.common.data.prepare import load_recipe
    p = []
    for name, recipe in prepare.items():
        p += check_name(f"data.prepare.{name}", str(name))
        try:
            load_recipe(str(recipe), check_sources=False)
        except (ValidationError, NotFoundError) as exc:
            p += [f"data.prepare.{name}: {x}" for x in getattr(exc, "problems", [str(exc)])]
    return p


def _timeouts(p: list[str], raw: Any) -> dict[str, float]:
    timeouts = dict(STAGE_TIMEOUTS)
    for k, v in _mapping(p, raw, "timeouts_s").items():
        if k not in STAGE_TIMEOUTS:
            p.append(f"timeouts_s: unknown stage {k!r}; known: {_known(STAGE_TIMEOUTS)}")
        elif not isinstance(v, (int, float)) or v <= 0:
            p.append(f"timeouts_s.{k}: {v!r} must be a number of seconds > 0")
        else:
            timeouts[k] = float(v)
    return timeouts


def _train_entry(p: list[str], i: int, t: Any, defaults: dict, bases: list, datasets: list) -> TrainEntry | None:
    where = f"train[{i}]"
    if not isinstance(t, dict):
        p.append(f"{where}: must be a mapping of TrainSpec fields")
        return None
    if {"base_model", "dataset"} & set(t):
        p.append(f"{where}: base_model/dataset come from base_models x datasets "
                 "(restrict with base_models: [...] / datasets: [...] in the configuration)")
        return None
    t_bases, t_datasets = t.get("base_models", bases), t.get("datasets", datasets)
    for key, subset, full in (("base_models", t_bases, bases), ("datasets", t_datasets, datasets)):
        if not isinstance(subset, list) or any(x not in full for x in subset):
            p.append(f"{where}.{key}: {subset!r} must be a list drawn from the top-level {key} {full}")
    own = {k: v for k, v in t.items() if k not in TRAIN_ONLY_KEYS}
    config = _deep_merge(defaults, own)
    return TrainEntry(where, config, t_bases if isinstance(t_bases, list) else [],
                      t_datasets if isinstance(t_datasets, list) else [], frozenset(_left_to(defaults, own)),
                      frozenset(k for f in _left_to(own, {}) + _left_to(own, {}, leaves=True) for k in (f, f.split(".")[-1])))


def _quantize_entry(p: list[str], where: str, q: Any) -> QuantizeEntry | None:
    if not isinstance(q, dict):
        p.append(f"{where}: must be a mapping (methods, sources, where, options)")
        return None
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
    valid = [m for m in methods if m in QUANT_METHODS and _method_accepts(p, where, m, options)]
    return QuantizeEntry(where, valid, sources, rule, options)


def _method_accepts(p: list[str], where: str, method: str, options: dict) -> bool:
    """The quantizer's own checks of ``options`` for ``method`` (no storage), once per entry."""
    probe = {"source_model": "source", "method": method, **options}
    bad = proto_problems(where, probe, quantize_spec_pb2.QuantizeSpec)
    if not bad:
        bad = [f"{where}.{x}" for x in ptq_spec_problems(as_sent(quantize_spec_pb2.QuantizeSpec, probe))]
    p += [b for b in bad if b not in p]
    return not bad


def _evaluate(p: list[str], raw: dict[str, Any], bases: list) -> EvaluateSection:
    ev = _mapping(p, raw.get("evaluate"), "evaluate")
    p += [f"evaluate: unknown key {k!r} (known: {_known(sorted(EVAL_KEYS))})" for k in ev if k not in EVAL_KEYS]
    tasks = []
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
        tasks.append(item)
    if "evaluate" in raw and not tasks:  # no evaluate section: train/quantize only
        p.append("evaluate.tasks: at least one task")
    for key in ("batch_size", "max_new_tokens"):
        if isinstance(ev.get(key), int):
            EVAL_PARAMS[key].read(ranges := Problems(), ev)
            p += [f"evaluate.{x}" for x in ranges.invalid]
    extra = _list(p, ev, "models")
    for i, m in enumerate(extra):
        p += check_name(f"evaluate.models[{i}]", str(m))
    models = list(dict.fromkeys((bases if ev.get("include_base", True) else []) + extra))
    return EvaluateSection(tasks, models, {k: ev[k] for k in EVAL_SETTINGS if k in ev})


# ----------------------------------------------------------------------------- shapes

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


def _left_to(defaults: dict, over: dict, prefix: str = "", leaves: bool = False) -> list[str]:
    """The dotted fields of ``defaults`` that ``over`` does not set (their merged value is the
    default's); ``leaves``: down to the fields inside a mapping too (``lora.r``, not only ``lora``)."""
    out = []
    for k, v in defaults.items():
        if leaves and isinstance(v, dict):
            out += _left_to(v, {}, f"{prefix}{k}.", leaves)
        elif k not in over:
            out.append(prefix + str(k))
        elif isinstance(v, dict) and isinstance(over[k], dict):
            out += _left_to(v, over[k], f"{prefix}{k}.", leaves)
    return out


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def proto_problems(where: str, spec: dict, message) -> list[str]:
    """Why ``spec`` does not parse as the proto ``message`` (unknown field, wrong type), at ``where``."""
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
