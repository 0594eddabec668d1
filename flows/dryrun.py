"""``ftlab run <experiment> --dry-run``: the full plan without running anything — every step, its
model name, the trainer's memory estimate for training steps, and what storage already holds
(those steps will be skipped)."""
from __future__ import annotations

from collections import Counter
from typing import Any

from flows.experiment import Experiment
from services.common import artifacts
from services.common.errors import FtlabError
from services.common.storage import ObjectStore


def memory_estimator():
    """The trainer's estimate, when this install has it: (model_config_for, estimate_training_memory)."""
    try:
        from services.trainer.memory import estimate_training_memory, model_config_for
    except ImportError:
        return None
    return model_config_for, estimate_training_memory


def _estimate(est, step, store) -> str:
    if est is None:
        return "n/a"
    model_config_for, estimate = est
    try:
        config = model_config_for(step.spec["base_model"], store)
        if config is None:
            return "n/a (unknown model)"
        gb = estimate(config, step.spec)
    except (FtlabError, KeyError, ValueError, TypeError) as exc:
        return f"n/a ({type(exc).__name__})"
    total = gb.get("total_gb") if isinstance(gb, dict) else None
    if total is None and isinstance(gb, dict):
        total = sum(v for k, v in gb.items() if isinstance(v, (int, float)) and k.endswith("_gb"))
    return f"{total:.1f} GB" if isinstance(total, (int, float)) else "n/a"


def plan_rows(exp: Experiment, store: ObjectStore | None) -> list[dict[str, Any]]:
    """One row per step (datasets first): stage, output, status (done/todo/?), memory estimate."""
    est = memory_estimator()

    def exists(bucket: str, prefix: str) -> str:
        if store is None:
            return "?"
        try:
            return "done" if artifacts.read_manifest(store, bucket, prefix) is not None else "todo"
        except FtlabError:
            return "?"

    rows = [{"stage": "data", "output": d, "status": exists("datasets", d), "memory": "",
             "request_id": ""} for d in exp.datasets]
    for s in exp.steps:
        rows.append({"stage": s.stage, "output": s.output, "status": exists(s.bucket, s.output),
                     "memory": _estimate(est, s, store) if s.stage == "train" else "",
                     "request_id": s.request_id(exp.name)})
    return rows


def render(exp: Experiment, store: ObjectStore | None, where: str) -> str:
    rows = plan_rows(exp, store)
    width = max(len(r["output"]) for r in rows)
    lines = [f"experiment {exp.name} ({exp.source}): {exp.description}", f"storage: {where}", "",
             f"{'stage':9s} {'status':6s} {'output (model or model/eval_id)':{width}s}  train memory est. (GPU, bf16)"]
    lines += [f"{r['stage']:9s} {r['status']:6s} {r['output']:{width}s}  {r['memory']}" for r in rows]
    missing = []
    for model in exp.inputs:
        state = "?" if store is None else ("present" if artifacts.read_manifest(store, "models", model) else "MISSING")
        if state != "present":
            how = ("ftlab model import --gguf smollm2" if model == "SmolLM2-135M-Instruct"
                   else f"ftlab model import Qwen/{model.removesuffix('-base')} --name {model}")
            missing.append(f"  {model}: {state} — import it with `{how}`")
    stages = Counter(s.stage for s in exp.steps)
    done = sum(r["status"] == "done" for r in rows if r["stage"] != "data")
    lines += ["", f"{len(exp.steps)} jobs: " + ", ".join(f"{stages[k]} {k}" for k in ("train", "quantize", "evaluate")),
              f"already done (will be skipped): {done}; to run: {len(exp.steps) - done}",
              "datasets: " + ", ".join(f"{r['output']} ({'present' if r['status'] == 'done' else r['status']})"
                                       for r in rows if r["stage"] == "data")]
    if any(r["memory"].startswith("n/a") for r in rows):
        lines.append("memory estimates: n/a where the trainer's estimator (services/trainer/memory.py) "
                     "is not installed or does not know the model")
    if missing:
        lines += ["input models not in storage:"] + missing
    return "\n".join(lines)
