"""``ftlab run <experiment> --dry-run``: the full plan without running anything — every step, its
model name, the trainer's memory estimate for training steps, and what storage already holds
(those steps will be skipped). A like-for-like evaluation (a model scored again under HF because a
model it is compared with cannot load in vLLM: flows/experiment.py ``_like_for_like_steps``) is
listed as any step, with the models it is for."""
from __future__ import annotations

import os
from collections import Counter
from typing import Any

from flows import selection
from flows.experiment import Experiment, Step, as_sent
from flows.identity import step_status
from services.common.storage import artifacts
from services.common.hardware import devices
from services.common.contract.errors import FtlabError
from services.common.generated.ftlab.v1 import train_spec_pb2
from services.common.storage.store import ObjectStore
from services.quantizer.config import default_output_name
from services.trainer.config import TrainConfig, estimate_at_submit


def estimate_device() -> str:
    """The device the estimates are for: the trainer's (FTLAB_DEVICE, cpu | cuda[:N]) where set,
    else a CUDA GPU (the experiments' target)."""
    return devices.device_type() if os.environ.get("FTLAB_DEVICE", "auto") != "auto" else "cuda"


def step_estimate(step: Step, store: ObjectStore | None, device_type: str | None = None) -> dict[str, float] | None:
    """The trainer's at-submit memory estimate of a training step (GiB by component, see
    services/trainer/memory.py): the step's spec resolved as the trainer's door resolves it
    (TrainConfig.resolve: the same defaults), then the same estimator. None when the model is
    unknown (no config.json in storage, no Qwen3 size in its name)."""
    cfg = TrainConfig.resolve(as_sent(train_spec_pb2.TrainSpec, step.spec), device_type or estimate_device())
    return estimate_at_submit(cfg, store)


def _estimate(step: Step, store: ObjectStore | None) -> str:
    try:
        est = step_estimate(step, store)
    except FtlabError as exc:
        return f"n/a ({type(exc).__name__})"
    if est is None:
        return "n/a (unknown model)"
    dtype = step.spec.get("dtype", "auto")  # a step's own dtype, when it sets one (the header gives auto's)
    return f"{est['total_gb']:.1f} GiB" + (f" ({dtype})" if dtype not in ("", "auto") else "")


def _note(step: Step) -> str:
    """What a like-for-like evaluation is for (shown in the memory column, empty for training)."""
    if not (rescore := step.labels.get("rescore")):
        return ""
    dtype = f" in dtype {rescore['dtype']}" if rescore.get("dtype", "auto") != "auto" else ""
    return f"like for like: again under {rescore['engine']}{dtype}, for {', '.join(rescore['for'])}"


def gated_on_selection(steps: list[Step]) -> dict[str, int]:
    """Step key -> how many rates its lr_sweep group chooses among, for every step that waits on a
    choice (flows/selection.py): a candidate's test evaluation and quantizations and everything made
    from them. Only the chosen rate's share of them runs; the losers' are never run."""
    rates = {s.output: len({selection.without_seed(ev.split("/", 1)[0]) for ev in s.spec["candidates"]})
             for s in steps if s.stage == selection.STAGE}
    waits: dict[str, int] = {}  # output -> the group's number of rates
    for s in steps:  # the plan lists every step after what it needs
        k = next((rates.get(a) or waits.get(a) for a in s.after if a in rates or a in waits), None)
        if k:
            waits[s.output] = k
    return {s.key: waits[s.output] for s in steps if s.output in waits}


NOT_CHOSEN = "not chosen"  # a candidate (or what it makes) whose rate lost on validation: never run


def _choices_made(exp: Experiment, store: ObjectStore | None) -> dict[str, dict[str, Any]]:
    """The lr_sweep choices storage already decides (every candidate's validation evaluation is
    there): select step output -> the choice, as the flow's select step makes it."""
    made: dict[str, dict[str, Any]] = {}
    for s in exp.steps if store is not None else ():
        if s.stage != selection.STAGE:
            continue
        try:
            r = selection.run_select(s, [], store)
        except (FtlabError, KeyError):
            continue
        if r["status"] == "succeeded" and "unscored" not in r:
            made[s.output] = r
    return made


def plan_rows(exp: Experiment, store: ObjectStore | None) -> list[dict[str, Any]]:
    """One row per step (datasets first): stage, output, status (done/todo/gated/conflict/blocked/?:
    gated = waits on an lr_sweep's choice, run only if its rate is chosen; blocked = made from a
    conflict), memory estimate."""

    def exists(bucket: str, prefix: str) -> str:
        if store is None:
            return "?"
        try:
            return "done" if artifacts.read_manifest(store, bucket, prefix) is not None else "todo"
        except FtlabError:
            return "?"

    def status(step: Step) -> tuple[str, str]:  # done only when made by the same configuration
        if store is None:
            return "?", ""
        try:
            return step_status(store, step)
        except FtlabError:
            return "?", ""

    rows = [{"stage": "data", "output": d, "status": exists("datasets", d), "memory": "",
             "request_id": ""} for d in exp.datasets]
    gated = gated_on_selection(exp.steps)
    unsound: set[str] = set()  # conflicts, and what is made from them: never "done" on a conflict's model
    choices = _choices_made(exp, store)  # as the flow's select steps would decide them now
    waiting = {s.output for s in exp.steps if s.key in gated or s.stage == selection.STAGE}
    for s in exp.steps:
        state, why = status(s)
        if bad := [m for m in s.after if m in unsound]:
            state, why = "blocked", f"made from {', '.join(bad)}, which is a conflict"
        if state in ("conflict", "blocked"):
            unsound.add(s.output)
        upstream = [choices[a] for a in s.after if a in choices]
        if s.stage == selection.STAGE and s.output in choices:
            state = "done"
        elif (no := selection.gated(s, upstream)) is not None:
            choices[s.output] = {"output": s.output, **no}
            state, why = NOT_CHOSEN, no["error"]
        elif any(a in waiting and a not in choices for a in s.after):
            state = "gated" if state in ("todo", "?") else state
        elif s.key in gated:  # the chosen rate's: it runs, and what waits on it is decided too
            choices[s.output] = {"output": s.output, "status": "succeeded"}
        rows.append({"stage": s.stage, "output": s.output, "status": state, "differs": why,
                     "rates": gated.get(s.key, 0),
                     "memory": _estimate(s, store) if s.stage == "train" else _note(s),
                     "request_id": s.request_id(exp.name), "digest": s.digest})
    return rows


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """The plan's count: jobs by stage (a select step is no job: it reads the validation scores from
    storage), those done, those to run now, and those gated on an lr_sweep's choice, of which
    only the chosen rate's run; then how many jobs will run in all."""
    stages = ("train", "quantize", "evaluate")
    jobs = [r for r in rows if r["stage"] in stages]
    selects = sum(r["stage"] == selection.STAGE for r in rows)

    def by_stage(rs) -> str:
        n = Counter(r["stage"] for r in rs)
        return ", ".join(f"{n[k]} {k}" for k in stages)

    done = sum(r["status"] == "done" for r in jobs)
    gated = [r for r in jobs if r["status"] == "gated"]
    lost = sum(r["status"] == NOT_CHOSEN for r in jobs)
    now = [r for r in jobs if r["status"] not in ("done", "gated", NOT_CHOSEN)]
    chosen = Counter()
    for r in gated:  # each group's rates have the same steps: 1/rates of each runs
        chosen[r["stage"]] += 1 / r["rates"]
    total = Counter(r["stage"] for r in now) + chosen
    lines = [f"{len(jobs)} jobs: {by_stage(jobs)}"
             + (f"; and {selects} select step(s) (an lr_sweep's choice of a rate, read from storage: no job)"
                if selects else ""),
             f"already done (will be skipped): {done}; to run: {len(now)} ({by_stage(now)})"
             + (f"; not chosen on validation (never run): {lost}" if lost else "")
             + (f"; gated on the lr_sweep's choice: {len(gated)} (only the chosen rate's {round(sum(chosen.values()))} run)"
                if gated else "")]
    if gated:
        lines.append(f"jobs that will run: {round(sum(total.values()))} ("
                     + ", ".join(f"{round(total[k])} {k}" for k in stages) + ")")
    return lines


def render(exp: Experiment, store: ObjectStore | None, where: str) -> str:
    rows = plan_rows(exp, store)
    width = max(len(r["output"]) for r in rows)
    lines = [f"experiment {exp.name} ({exp.source}): {exp.description}", f"storage: {where}", "",
             f"{'stage':9s} {'status':10s} {'output (model or model/eval_id)':{width}s}  train memory est. "
             + ("(GPU, bf16" if estimate_device() == "cuda" else "(CPU, fp32") + " unless a step sets dtype)"]
    lines += [f"{r['stage']:9s} {r['status']:10s} {r['output']:{width}s}  {r['memory']}" for r in rows]
    missing = []
    for model in exp.inputs:
        state = "?" if store is None else ("present" if artifacts.read_manifest(store, "models", model) else "MISSING")
        if state != "present":
            how = ("ftlab model import --gguf smollm2" if model == "SmolLM2-135M-Instruct"
                   else "ftlab model make-tiny --tokenizer ../shared/tokenizers/qwen3" if model == "Qwen3-tiny-base"
                   else f"ftlab model import Qwen/{model.removesuffix('-base')} --name {model}")
            missing.append(f"  {model}: {state} — import it with `{how}`")
    again = sum(bool(s.labels.get("rescore")) for s in exp.steps)
    lines += [""] + summary(rows) + ([f"of which like for like: {again} evaluation(s), a model scored again under HF in the "
                                      "dtype of the model compared with it (vLLM cannot load that one)"] if again else []) + [
              "datasets: " + ", ".join(f"{r['output']} ({'present' if r['status'] == 'done' else r['status']})"
                                       for r in rows if r["stage"] == "data")]
    if estimate_device() == "cuda" and not devices.has_gpu():
        note = ("devices: the memory column is for a CUDA GPU (the experiments' target); this host has no GPU, so a "
                "trainer here estimates for CPU, fp32 (FTLAB_DEVICE=cpu shows that)")
        if any(s.stage == "quantize" and default_output_name(s.spec, gpu=True) != s.output for s in exp.steps):
            note += (", and PTQ names carry this host's lm_head precision (…_headfp32; a GPU quantizer would name "
                     "them …_headbf16 and refuse these)")
        lines.append(note + "; set FTLAB_DEVICE=cuda or cpu to plan for one device")
    if any(r["memory"].startswith("n/a") for r in rows):
        lines.append("memory estimates: n/a where the trainer's estimator (services/trainer/memory.py) "
                     "does not know the model (no config.json in storage, no Qwen3 size in its name)")
    if missing:
        lines += ["input models not in storage:"] + missing
    clashes = [f"  {r['output']}: {r['differs']}" for r in rows if r["status"] == "conflict"]
    if clashes:
        lines += [f"conflicts ({len(clashes)}): storage holds these names for another configuration (planned vs "
                  "stored); `ftlab run` refuses the plan until they are deleted or renamed:"] + clashes
    return "\n".join(lines)
