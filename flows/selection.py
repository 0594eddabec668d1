"""Model selection on a validation split: a per-method learning-rate sweep, each rate scored on
validation data, the best kept, and only the chosen configuration scored on the test split (and
quantized, and compared) — so no choice ever looks at test items.

An experiment file's ``lr_sweep`` section (docs/FLOWS.md)::

    lr_sweep:
      rates: {lora: [1e-4, 5e-4, 2e-3], vera: [2e-3, 1e-2, 5e-2]}   # per peft_method (none: full FT)
      select_on: {task: squad_v2, dataset: squad-val, split: validation, limit: 100}   # metric: the task's headline
      seeds: [1]          # optional: sweep on these of the experiment's seeds only (default: all of them)

At plan time (``expand`` then ``gate``, the planner's two hooks) every train step whose method has
rates becomes one *candidate* per rate, named by the study's name with the rate
(``…_SFT_LoRa8_lr5e-4_NoQuant``) and trained at that rate;
each candidate gets a validation evaluation; one ``select`` step per configuration (the *group*,
named by the study's name) waits for them; and every step that reads a candidate (its test
evaluation, its quantizations) waits for the select step. At run time (``run_select``, ``gated``)
the select step reads each candidate's validation score from storage and keeps the best (ties: the
earlier rate in the list); the losers' test evaluations and quantizations are not run (status
``not_selected``), nor anything made from them. The choice, with every candidate's score, is in
the select step's result, which the report prints (``report_lines``); the chosen model's own
manifest carries its learning rate (its TrainSpec) and its name says it.

With ``seeds`` (a subset of the experiment's ``seeds:``) only those seeds train at every rate and
are scored on validation; the other seeds of a configuration are trained once the choice is made,
at the chosen rate only (their candidates at the other rates are planned, gated on the choice and
never run): an n-rate sweep over k seeds then costs n + k - 1 trainings per configuration, not n·k.

Steps without rates in the sweep are planned as before: trained once at their own rate."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

from services.common.contract.errors import NotFoundError, ValidationError
from services.common.contract import naming
from services.common.data.tasks import get_task
from services.common.jobs.record import spec_hash
from services.common.storage import artifacts

SWEEP_KEYS = {"rates", "select_on", "seeds"}
SELECT_KEYS = {"task", "dataset", "split", "limit", "metric"}
STAGE = "select"
NOT_SELECTED = "not_selected"


@dataclass(frozen=True)
class Sweep:
    rates: dict[str, list[float]]      # peft_method -> learning rates, in the YAML's order
    task: dict[str, Any]               # the EvaluateSpec task item scored for selection
    metric: str
    higher_is_better: bool
    seeds: tuple[int, ...] = ()        # the seeds swept (empty: every seed of the experiment)
    groups: dict[str, list[str]] = field(default_factory=dict)  # filled by expand: group -> swept candidates
    followers: dict[str, str] = field(default_factory=dict)     # filled by expand: candidate -> group, trained
    #                                                             only if its rate is chosen (seeds not swept)


def parse(raw: Any, p: list[str]) -> Sweep | None:
    """The ``lr_sweep`` section (None when absent); its problems appended to ``p``."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        p.append("lr_sweep: must be a mapping (rates, select_on)")
        return None
    p += [f"lr_sweep: unknown key {k!r} (known: {', '.join(sorted(SWEEP_KEYS))})" for k in raw if k not in SWEEP_KEYS]
    rates = raw.get("rates")
    if not isinstance(rates, dict) or not rates:
        p.append("lr_sweep.rates: must map peft methods to lists of learning rates (e.g. {lora: [1e-4, 5e-4]})")
        rates = {}
    clean: dict[str, list[float]] = {}
    for method, values in rates.items():
        try:
            vals = [float(v) for v in values] if isinstance(values, list) else []
        except (TypeError, ValueError):
            vals = []
        if len(vals) < 2 or any(not 0 < v < 1 for v in vals) or len(set(vals)) != len(vals):
            p.append(f"lr_sweep.rates.{method}: {values!r} must be a list of at least two distinct rates in (0, 1)")
        else:
            clean[str(method)] = vals
    sel = raw.get("select_on")
    if not isinstance(sel, dict):
        p.append("lr_sweep.select_on: must be a mapping (task, dataset, split, limit, metric)")
        return None
    p += [f"lr_sweep.select_on: unknown key {k!r} (known: {', '.join(sorted(SELECT_KEYS))})"
          for k in sel if k not in SELECT_KEYS]
    split = sel.get("split", "validation")
    if split == "test":  # the point of the section: choosing on test items is what it prevents
        p.append("lr_sweep.select_on.split: 'test' would choose on the items the result is reported on; "
                 "prepare a validation split (e.g. `ftlab data prepare squad-val`)")
    try:
        task = get_task(sel.get("task", ""))
    except ValidationError as exc:
        p.append(f"lr_sweep.select_on.task: {exc}")
        return None
    metric, higher = task.headline
    if "metric" in sel:
        known = dict(task.metrics)
        if sel["metric"] not in known:
            p.append(f"lr_sweep.select_on.metric: {sel['metric']!r} is not one of {task.name}'s metrics "
                     f"({', '.join(known)})")
        else:
            metric, higher = sel["metric"], known[sel["metric"]]
    item = {"task": task.name, "split": split, **{k: sel[k] for k in ("dataset", "limit") if k in sel}}
    seeds = raw.get("seeds", [])
    if not (isinstance(seeds, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)
            and len(set(seeds)) == len(seeds)):
        p.append(f"lr_sweep.seeds: {seeds!r} must be a list of distinct integer seeds (a subset of seeds:)")
        seeds = []
    return Sweep(clean, item, metric, higher, tuple(seeds))


def rate_tag(rate: float) -> str:
    """``5e-4`` -> ``lr5e-4``, ``0.05`` -> ``lr0.05``: readable, one float one name (the sweep-suffix
    format of issue #25's naming, so the report reads the rate back from the name)."""
    if rate < 0.01:
        mantissa, exp = f"{rate:.3e}".split("e")
        return f"lr{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
    return f"lr{rate:g}"


def candidate_name(group: str, rate: float) -> str:
    """The rate's segment right after the method's: ``X_SFT_LoRa8_NoQuant`` ->
    ``X_SFT_LoRa8_lr5e-4_NoQuant`` (before a seed's ``_s2`` and the quantization tag); a name
    without ``_SFT_`` (an ``output_name`` of one's own) gets it at the end."""
    head, sep, tail = group.partition("_SFT_")
    if not sep:
        return f"{group}_{rate_tag(rate)}"
    method, *rest = tail.split("_")
    return head + sep + "_".join([method, rate_tag(rate), *rest])


def expand(p: list[str], sweep: Sweep | None, trained: list, train_step: Callable,
           every_entry_planned: bool = True) -> list:
    """Each train step whose method has rates -> one candidate per rate (the planner's hook 1);
    ``train_step``: the planner's own, so each candidate is resolved (checked, named, identified) as
    any step (passed in, not imported: the planner imports this module). Rates for a method no
    step trains are refused (they would be ignored), unless a train entry could not be planned
    (``every_entry_planned`` false: it may be the one that trains that method)."""
    if sweep is None:
        return trained
    methods = sorted({str(s.labels.get("peft_method")) for s in trained})
    if every_entry_planned:
        p += [f"lr_sweep.rates.{m}: no train entry trains peft_method {m!r} (the plan trains: "
              f"{', '.join(methods) or 'nothing'}); its rates would be ignored: sweep a method the plan trains, "
              "or add a train entry for it" for m in sweep.rates if m not in methods]
    if sweep.seeds and (unknown := sorted(set(sweep.seeds) - {s.spec.get("seed") for s in trained})):
        p.append(f"lr_sweep.seeds: {unknown} not among the experiment's seeds (seeds: or --seed)")
    out = []
    for step in trained:
        method = step.labels.get("peft_method")
        if not sweep.rates.get(method):
            out.append(step)
            continue
        group = without_seed(step.output)  # the seeds of a configuration are chosen for together
        sweep.groups.setdefault(group, [])
        swept = not sweep.seeds or step.spec.get("seed") in sweep.seeds
        for rate in sweep.rates[method]:
            spec = {**copy.deepcopy(step.spec), "learning_rate": rate, "output_name": candidate_name(step.output, rate)}
            if (cand := train_step(p, f"lr_sweep.rates.{method}", spec)) is None:
                continue
            cand.labels = {**step.labels, **cand.labels, "learning_rate": rate, "select_group": group}
            if swept:
                sweep.groups[group].append(cand.output)
            else:
                sweep.followers[cand.output] = group
            out.append(cand)
    return out


def gate(sweep: Sweep | None, experiment: str, settings: dict[str, Any], steps: list, step_type: type) -> list:
    """Validation evaluations and one select step per group; every test evaluation and quantization
    of a candidate waits for its group's choice (the planner's hook 2, on the whole plan)."""
    if sweep is None or not sweep.groups:
        return steps
    Step = step_type  # the planner's Step (passed in, as in expand)
    group_of = {c: g for g, cands in sweep.groups.items() for c in cands} | sweep.followers
    val_steps, select_steps = [], []
    for group, cands in sweep.groups.items():
        evals = []
        for c in cands:
            espec = {"model": c, "tasks": [dict(sweep.task)], **settings}
            espec["eval_id"] = f"{experiment}-val-{spec_hash(espec)[:10]}"
            labels = {**next(s.labels for s in steps if s.output == c), "model": c, "split": sweep.task["split"]}
            val_steps.append(Step("evaluate", "evaluator", espec, f"{c}/{espec['eval_id']}", [c], labels))
            evals.append(val_steps[-1].output)
        sspec = {"group": group, "candidates": evals, "task": sweep.task["task"], "metric": sweep.metric,
                 "higher_is_better": sweep.higher_is_better}
        select_steps.append(Step(STAGE, "flow", sspec, select_output(group), evals, {"select_group": group}))
    for s in steps:
        source = {"evaluate": s.spec.get("model"), "quantize": s.spec.get("source_model"),
                  "train": s.output if s.output in sweep.followers else None}.get(s.stage)
        if source in group_of:
            s.after = [*s.after, select_output(group_of[source])]
            s.labels = {**s.labels, "select_group": group_of[source], "candidate": without_seed(source)}
    swept = [s for s in steps if s.stage == "train" and s.output not in sweep.followers]
    followers = [s for s in steps if s.stage == "train" and s.output in sweep.followers]
    return swept + val_steps + select_steps + followers + [s for s in steps if s.stage != "train"]


def without_seed(name: str) -> str:
    """The configuration a seed replicates (``naming.without_seed``'s name, its seed dropped)."""
    return naming.without_seed(name)[0]


def select_output(group: str) -> str:
    return f"{group}@{STAGE}"


# ----------------------------------------------------------------------------- run time

def choose(scores: dict[str, float | None], higher_is_better: bool) -> str | None:
    """The best scored candidate; ties go to the earlier one (the YAML's rate order); None when
    none was scored."""
    scored = [(c, v) for c, v in scores.items() if v is not None]
    if not scored:
        return None
    best = max(v for _, v in scored) if higher_is_better else min(v for _, v in scored)
    return next(c for c, v in scored if v == best)


def validation_score(store, evaluation: str, task: str, metric: str) -> float | None:
    """A committed evaluation's score on ``task`` by ``metric`` (None when not committed)."""
    model, eval_id = evaluation.rsplit("/", 1)
    try:
        ev = artifacts.read_json(store, "evaluations", f"{model}/{eval_id}", "metrics.json")
    except NotFoundError:
        return None
    block = ev["datasets"][task]
    value = block.get("metrics", {}).get(metric, block.get(metric))
    return None if value is None else float(value)


def run_select(step, upstream: list[dict[str, Any]], store) -> dict[str, Any]:
    """The select step, in the flow (no service): every candidate's validation score, each rate's
    mean over its seeds, and the chosen rate's configuration (its name without the seed)."""
    s = step.spec
    result = {"key": step.key, "stage": step.stage, "output": step.output, "labels": step.labels}
    scores = {ev.split("/", 1)[0]: validation_score(store, ev, s["task"], s["metric"]) for ev in s["candidates"]}
    per_rate: dict[str, list[float]] = {}
    for model, v in scores.items():
        per_rate.setdefault(without_seed(model), []).extend([] if v is None else [v])
    by_rate = {c: (sum(v) / len(v) if v else None) for c, v in per_rate.items()}
    chosen = choose(by_rate, s["higher_is_better"])
    missing = [m for m, v in scores.items() if v is None]
    if chosen is None:
        return result | {"status": "failed", "error": f"no candidate of {s['group']} has a validation score"}
    return result | {"status": "succeeded", "chosen": chosen, "by_rate": by_rate, "scores": scores,
                     "seeds": {c: len(v) for c, v in per_rate.items()}, "metric": s["metric"], "task": s["task"],
                     "split": "validation", **({"unscored": missing} if missing else {})}


def gated(step, upstream: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Why this step is not run: its group chose another candidate, or it is made from a model that
    was not selected. None: run it."""
    for u in upstream:
        if u.get("stage") == STAGE and u.get("chosen") and step.labels.get("candidate") not in (None, u["chosen"]):
            return {"status": NOT_SELECTED, "error": f"{u['chosen']} was chosen on validation"}
        if u.get("status") == NOT_SELECTED:
            return {"status": NOT_SELECTED, "error": f"made from {u['output']}, which was not selected"}
    return None


def _rate_of(model: str) -> str:
    return next((seg for seg in model.split("_") if seg.startswith("lr")), model)


def report_lines(steps: list[dict[str, Any]]) -> list[str]:
    """The report's section: per group, each rate's validation score and the choice."""
    sel = [s for s in steps if s.get("stage") == STAGE]
    if not sel:
        return []
    lines = ["## Learning rates chosen on validation", "",
             "Each configuration trained at every rate of `lr_sweep` (on its swept seeds, `lr_sweep.seeds`, "
             "else on all; the seed count is given where more than one); the rate with the best validation "
             "score was kept, seeds outside `lr_sweep.seeds` were trained at that rate only, and only the "
             "chosen models were scored on the test split.", "",
             "| configuration | metric | " + "candidates (validation score) | chosen |", "|---|---|---|---|"]
    for s in sel:
        if s["status"] != "succeeded":
            lines.append(f"| {s['labels'].get('select_group')} | | {s.get('error', s['status'])} | |")
            continue
        cands = ", ".join(f"{_rate_of(m)}: {'—' if v is None else f'{v:.4g}'}"
                          + (f" (mean of {s['seeds'][m]} seeds)" if s["seeds"][m] > 1 else "")
                          for m, v in s["by_rate"].items())
        lines.append(f"| {s['labels']['select_group']} | {s['task']} {s['metric']} ({s['split']}) | {cands} "
                     f"| {s['chosen']} |")
    return lines + [""]
