"""Experiment specs (YAML): what to train, quantize and evaluate. Loading validates the whole
file and reports every problem at once; planning expands it into the steps of each stage. The
file's schema (typed sections, their checks) is ``flows/experiment_spec.py``; this module builds
the plan from it, one small function per stage.

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

Model names follow the study (services/common/contract/naming.py); request ids are derived from the
experiment and each step's spec hash, so a rerun resubmits the same requests."""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from flows import report_verdicts, selection
from flows.experiment_spec import ExperimentSpec, QuantizeEntry, TrainEntry, as_sent, proto_problems
from services.common.contract.errors import ValidationError
from services.common.generated.ftlab.v1 import evaluate_spec_pb2, train_spec_pb2
from services.common.jobs.record import spec_hash
from services.common.contract.identity import config_digest, describe, differences, identity_config
from services.common.contract.naming import VARIANT_FIELDS, check_name, split_variant, tag_quant, with_variant
from services.common.data.tasks import get_task
from services.evaluator.config import quantized_dtype
from services.quantizer.config import default_output_name
from services.quantizer.ptq import PTQ_METHODS
from services.trainer.config import PARAMS as TRAIN_FIELDS
from services.trainer.config import TRAINING_QUANT, TrainConfig

EXPERIMENTS_DIR = Path(__file__).parent / "experiments"


@dataclass
class Step:
    stage: str                 # train | quantize | evaluate
    service: str               # trainer | quantizer | evaluator
    spec: dict[str, Any]       # the proto spec as JSON
    output: str                # model name (train/quantize) or "model/eval_id" (evaluate)
    after: list[str] = field(default_factory=list)   # models this step needs
    labels: dict[str, Any] = field(default_factory=dict)  # what the report groups by (method, rank, ...)
    # Training steps: their identity, as the trainer records it (contract/identity.py): the digest of
    # the resolved configuration and the parents' digests. A quantization or evaluation resolves its
    # config against storage, so its identity is checked against its stored parents (flows/identity.py).
    digest: str = ""
    identity: dict[str, Any] = field(default_factory=dict)
    parents: list[str] = field(default_factory=list)

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


def resolve_path(name_or_path: str) -> Path:
    """The experiment file of a shipped name or a path; a name or path that is not there is bad
    input (ValidationError: ``ftlab`` exits 2, as for any other refused request)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ValidationError(f"experiment file {p} not found")
        return p
    shipped = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if not shipped.exists():
        raise ValidationError(f"no experiment {name_or_path!r}; shipped: {', '.join(shipped_names())}; "
                              "or give a path to a .yaml file")
    return shipped


def shipped_names() -> list[str]:
    return sorted(x.stem for x in EXPERIMENTS_DIR.glob("*.yaml"))


Check = Callable[["Experiment"], list[str]]


def load(name_or_path: str, seeds: list[int] | None = None, checks: Iterable[Check] = ()) -> Experiment:
    """The plan of an experiment file; ``seeds`` (``ftlab run --seed``) replaces the file's ``seeds``;
    ``checks``: more checks of the plan, reported with the file's (``plan``)."""
    path = resolve_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValidationError(f"{path}: not valid YAML: {exc}") from None
    return plan(raw, str(path), seeds, checks)


# ----------------------------------------------------------------------------- matrix expansion

def expand(config: dict[str, Any], descriptor=train_spec_pb2.TrainSpec.DESCRIPTOR,
           prefix: str = "") -> list[dict[str, Any]]:
    """Every combination of the list-valued fields: ``{lora: {r: [32, 64]}, seed: [0, 1]}`` gives 4.
    A repeated proto field or a list option of the schema (``lora.target_modules``, in the PEFT
    options map) is a value, not an axis, unless it is a list of lists."""
    axes: list[list[Any]] = []
    keys: list[str] = []
    for k, v in config.items():
        fd = descriptor.fields_by_name.get(k) if descriptor is not None else None
        repeated = (fd is not None and fd.is_repeated) or getattr(TRAIN_FIELDS.get(prefix + k), "kind", None) is list
        if isinstance(v, dict):
            options = expand(v, fd.message_type if fd is not None and fd.message_type else None, f"{prefix}{k}.")
        elif isinstance(v, list) and (not repeated or (v and all(isinstance(x, list) for x in v))):
            options = list(v)
        else:
            options = [v]
        keys.append(k)
        axes.append(options)
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


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


# ----------------------------------------------------------------------------- plan

def plan(raw: Any, source: str = "<spec>", seeds: list[int] | None = None, checks: Iterable[Check] = ()) -> Experiment:
    """The steps of an experiment file (a mapping), stage by stage; every problem of the file, its
    schema's (``ExperimentSpec.parse``) then its steps', then those ``checks`` find in the plan
    (as far as it could be built: what storage says, flows/door.py), raised at once as one
    ValidationError. ``seeds`` (``--seed``) replaces the file's ``seeds:``; a problem naming a flag is
    the command line's and is not prefixed with the file."""
    if not isinstance(raw, dict):
        raise ValidationError(f"{source}: an experiment is a mapping")
    p: list[str] = []
    spec = ExperimentSpec.parse(raw, p, seeds)
    if seeds:
        raw = {**raw, "seeds": spec.seeds}  # the run's record keeps the seeds it ran
    sweep = selection.parse(raw.get("lr_sweep"), p)  # a learning rate per method chosen on validation
    report_verdicts.parse(raw.get("verdicts"), p)    # the study's questions the report answers
    known = len(p)
    configured = _name_by_identity(p, [s for entry in spec.train for s in _train_steps(p, spec, entry)])
    trained = selection.expand(p, sweep, configured, _train_step, every_entry_planned=len(p) == known)
    quantized = [s for entry in spec.quantize for s in _quantize_steps(spec, entry, trained)]
    steps = selection.gate(sweep, str(spec.name), spec.evaluate.settings,
                           trained + quantized + _evaluate_steps(p, spec, trained + quantized), Step)
    p += _duplicates(steps)
    if not steps and not p:
        p.append("the plan is empty (check include/exclude and the evaluate section)")
    exp = Experiment(str(spec.name), spec.description, raw, steps, spec.timeouts_s, _datasets_read(spec, trained),
                     spec.data, source)
    for check in checks:
        try:
            p += check(exp)
        except ValidationError:
            if not p:
                raise
            # a plan with problems may hold what a check cannot read (an unknown task): those are reported
    if p:
        raise ValidationError([x if x.startswith("--") else f"{source}: {x}" for x in p])
    return exp


def _gist(problem: str) -> str:
    """A problem without its list of known fields: ``x: unknown key (known: …)`` (the proto parse)
    and ``x: unknown field (known: …)`` (the trainer's strict check) are one problem."""
    return re.sub(r": unknown (?:key|field) \(known[^)]*\)$", ": unknown", problem)


def _train_steps(p: list[str], spec: ExperimentSpec, entry: TrainEntry) -> list[Step]:
    """One configuration's jobs: its matrix x base models x datasets, filtered by include/exclude,
    each resolved by the trainer's own config (its checks, its model name); a problem of a field the
    entry takes from ``defaults`` is the default's (reported once for every entry)."""
    steps = []
    q: list[str] = []
    for combo, base, dataset in itertools.product(expand(entry.config), entry.base_models, entry.datasets):
        fields = {"base_model": base, "dataset": dataset, **combo}
        if ((spec.include and not any(matches(r, fields) for r in spec.include))
                or any(matches(r, fields) for r in spec.exclude)):
            continue
        for fields, variant in replicas(fields, spec.seeds):
            if (step := _train_step(q, entry.where, fields, variant)) is not None:
                steps.append(step)
    said = {_gist(x) for x in p}
    for x in map(entry.blame, q):  # each problem once: the wire's parse and the trainer both refuse a key
        if _gist(x) not in said:
            p.append(x)
            said.add(_gist(x))
    return steps


def replicas(fields: dict[str, Any], seeds: list[int]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The training runs of one configuration: once, or once per seed of ``seeds:``, each with the
    swept values its name carries (``{"seed": 2}`` -> ``..._s2_NoQuant``). The one place a
    configuration is replicated (a learning-rate sweep adds its values here too)."""
    if not seeds:
        return [(fields, {})]
    return [({**fields, "seed": s}, {"seed": s}) for s in seeds]


def _train_step(p: list[str], where: str, spec: dict[str, Any], variant: dict[str, Any] | None = None) -> Step | None:
    bad = proto_problems(where, spec, train_spec_pb2.TrainSpec)
    try:  # the trainer's own checks and name (its door adds only what storage says)
        cfg = TrainConfig.resolve({k: v for k, v in spec.items() if k != "output_name"} if bad else
                                  as_sent(train_spec_pb2.TrainSpec, spec, drop=("output_name",)))
    except ValidationError as exc:
        bad += [f"{where}.{x}" for x in exc.problems]
    if bad:
        p += [b for b in bad if b not in p]
        return None
    out = cfg.output_name
    if spec.get("output_name"):
        out = str(spec["output_name"]).replace("{name}", out)
        p += check_name(f"{where}.output_name", out)
    if variant:
        out = with_variant(out, variant, tag_quant(cfg.quant))
    spec["output_name"] = out
    labels = {"base_model": spec["base_model"], "dataset": spec["dataset"], "peft_method": cfg.peft_method,
              "rank": cfg.adapter.r if cfg.adapter else None, "training_quant": cfg.training_quant}
    if variant:
        labels |= variant
    identity = identity_config("train", cfg.to_dict())
    parents = [spec["base_model"]]  # an imported model's digest is its name (contract/identity.py)
    return Step("train", "trainer", spec, out, [spec["base_model"]], labels,
                config_digest("train", identity, parents), identity, parents)


def _name_by_identity(p: list[str], trained: list[Step]) -> list[Step]:
    """One name, one configuration: training steps that share a name but not a digest are told
    apart by the swept fields they differ in (``_lr2e-4``, ``_s2``: naming.VARIANT_FIELDS), or
    refused with the fields they differ in when those are not sweep fields. Identical
    configurations stay duplicates (``_duplicates`` says so)."""
    by_name: dict[str, list[Step]] = {}
    for s in trained:
        by_name.setdefault(s.output, []).append(s)
    for name, group in by_name.items():
        distinct = list({s.digest: s for s in group}.values())
        if len(distinct) < 2:
            continue
        fields = sorted({f for a in distinct for b in distinct for f, _, _ in differences(a.identity, b.identity)})
        other = [f for f in fields if f not in VARIANT_FIELDS]
        if other:
            a, b = distinct[0], next(x for x in distinct[1:] if differences(distinct[0].identity, x.identity))
            p.append(f"two configurations are both named {name!r} but differ in {describe(differences(a.identity, b.identity), 'one', 'other')}; "
                     "name them apart with output_name: '{name}-...'")
            continue
        study, named = split_variant(name)
        for s in group:
            variant = {**named, **{f: s.identity[f] for f in fields}}
            s.output = s.spec["output_name"] = with_variant(study, variant, tag_quant(TRAINING_QUANT[s.identity["training_quant"]]))
            s.labels |= variant
    return trained


def _quantize_steps(spec: ExperimentSpec, entry: QuantizeEntry, trained: list[Step]) -> list[Step]:
    """Each accepted method on each chosen source (trained outputs, base models) ``where`` matches."""
    sources = [(s.output, s.labels) for s in trained] if "trained" in entry.sources else []
    if "base" in entry.sources:
        sources += [(b, {"base_model": b}) for b in spec.base_models]
    steps = []
    for src, labels in sources:
        if not matches(entry.rule, labels):
            continue
        for m in entry.methods:
            qspec = {"source_model": src, "method": m, **entry.options}
            out = default_output_name(qspec)  # the study's tag with the step's options (GPTQ_w4_g64_...)
            qspec["output_name"] = out
            steps.append(Step("quantize", "quantizer", qspec, out, [src], {**labels, "ptq_method": m, "source_model": src}))
    return steps


def _evaluate_steps(p: list[str], spec: ExperimentSpec, produced: list[Step]) -> list[Step]:
    """One evaluation per model: the evaluated inputs (base models, ``evaluate.models``), then every
    trained and quantized output, each on every task."""
    ev = spec.evaluate
    if not ev.tasks:  # no evaluate section: nothing to evaluate
        return []
    steps = []
    for model, labels in [(m, {"base_model": m}) for m in ev.models] + [(s.output, s.labels) for s in produced]:
        espec = {"model": model, "tasks": ev.tasks, **ev.settings}
        bad = proto_problems("evaluate", espec, evaluate_spec_pb2.EvaluateSpec)
        if bad:
            p += [b for b in bad if b not in p]
            continue
        espec["eval_id"] = f"{spec.name}-{spec_hash(espec)[:10]}"
        steps.append(Step("evaluate", "evaluator", espec, f"{model}/{espec['eval_id']}", [model],
                          {**labels, "model": model}))
    return steps + _like_for_like_steps(str(spec.name), steps, produced)


# ----------------------------------------------------------------------------- like-for-like evaluations

RESCORE_ENGINE = "hf"  # the engine every model loads in: the one a model vLLM cannot load is scored with


def predicted_scoring(step: Step | None) -> tuple[str, str, str]:
    """(engine, dtype, why): what the evaluator's ``auto`` will run the model a plan step makes on,
    and in which dtype, predicted from the plan alone (no weights exist yet) by the rules
    services/evaluator/engines.vllm_refusal applies at run time: HF for a PTQ whose plugin's format
    vLLM cannot load (``vllm_loads``: bitsandbytes, HQQ) and for an adapter trained on a quantized
    base (QLoRA, INT8), computing in the dtype its quantized weights do (the evaluator's
    ``quantized_dtype``, an EvaluateSpec ``dtype`` value: ``compute``, or QLoRA's bf16); vLLM in
    the evaluator's default dtype otherwise (``auto``; ``None``, a model the plan reads: a plain
    checkpoint as far as the plan knows). Where the run time differs (no vLLM installed, a head size
    vLLM's CPU attention lacks, another device), the comparisons pair evaluations by the engine and
    dtype each one recorded, not by this prediction, and mark a pair that is not alike."""
    if step is not None and step.stage == "quantize":
        method = PTQ_METHODS.get(step.spec.get("method"))
        if method is not None and not method.vllm_loads:
            return (RESCORE_ENGINE, quantized_dtype(method.default_quant),
                    f"{method.name}: vLLM cannot load its {method.output_format or method.name} format")
    if (step is not None and step.stage == "train" and step.labels.get("peft_method") != "none"
            and step.labels.get("training_quant", "none") != "none"):
        return (RESCORE_ENGINE, quantized_dtype(TRAINING_QUANT[step.labels["training_quant"]]),
                f"an adapter on a {step.labels['training_quant']}-quantized base")
    return "vllm", "auto", ""


def _like_for_like_steps(experiment: str, evaluations: list[Step], produced: list[Step]) -> list[Step]:
    """One more evaluation, under HF in the dtype the child computes in (``predicted_scoring``), of
    every model that a model scored on HF is compared with while it would itself be scored on vLLM:
    the child's parent (a fine-tune's base, a PTQ's source) and, for a fine-tune, the other
    fine-tunes of its base on its data (the configurations the report sets it against and the
    verdicts judge it by: flows/comparisons.py ``between_configurations``, flows/report_verdicts.py).
    Once per model and dtype however many children ask for it, with its planned evaluation's tasks,
    items and generation settings plus ``engine: hf`` and that ``dtype`` (a bitsandbytes model on
    CPU computes in fp32, while the parent's default there is bf16), under its own eval id (the spec
    hash covers both), labelled ``rescore`` so the report keeps it out of the summary table;
    flows/comparisons.py pairs the child with it."""
    made = {s.output: s for s in produced}
    evaluated = {s.spec["model"]: s for s in evaluations}
    wanted: dict[tuple[str, str], list[str]] = {}  # (model to score again, dtype) -> the HF-scored models
    for child in produced:
        engine, dtype, _ = predicted_scoring(child)
        if child.output not in evaluated or engine != RESCORE_ENGINE:
            continue
        rivals = child.after[:1] + [s.output for s in produced if child.stage == "train" and s.stage == "train"
                                    and s is not child and s.labels["base_model"] == child.labels["base_model"]
                                    and s.labels["dataset"] == child.labels["dataset"]]
        for model in rivals:
            if model in evaluated and predicted_scoring(made.get(model))[0] != RESCORE_ENGINE:
                wanted.setdefault((model, dtype), []).append(child.output)
    steps = []
    for (model, dtype), children in wanted.items():
        ev = evaluated[model]
        espec = {**{k: v for k, v in ev.spec.items() if k != "eval_id"}, "engine": RESCORE_ENGINE,
                 **({"dtype": dtype} if dtype != "auto" else {})}
        espec["eval_id"] = f"{experiment}-{RESCORE_ENGINE}-{spec_hash(espec)[:10]}"
        steps.append(Step("evaluate", "evaluator", espec, f"{model}/{espec['eval_id']}", [model],
                          {**ev.labels, "rescore": {"engine": RESCORE_ENGINE, "dtype": dtype, "for": children}}))
    return steps


def _duplicates(steps: list[Step]) -> list[str]:
    seen: dict[str, int] = {}
    for s in steps:
        seen[s.key] = seen.get(s.key, 0) + 1
    return [f"two configurations produce the same step {k!r} (differ them with output_name: '{{name}}-...')"
            for k, n in seen.items() if n > 1]


def _datasets_read(spec: ExperimentSpec, trained: list[Step]) -> list[str]:
    """Every dataset a step reads: training datasets, then each evaluated task's."""
    def short(task: str) -> str:
        try:
            return get_task(task).short
        except ValidationError:  # an unknown task: the schema reported it (the plan is refused)
            return ""
    return list(dict.fromkeys([s.spec["dataset"] for s in trained]
                              + [d for t in spec.evaluate.tasks if (d := t.get("dataset") or short(str(t.get("task", ""))))]))
