"""The evaluation orchestrator (the study's ``03_EvaluationOrchestrator.py``): find every model in
storage that lacks an evaluation for the requested tasks and evaluate it, continuing past
failures; the report lists what was evaluated and what failed (``ftlab evaluate-missing``)."""
from __future__ import annotations

import fnmatch
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.experiment import Step
from flows.pipeline import DEFAULT_REPORT_DIR, MAX_STEPS_IN_FLIGHT, aggregate, cancel_jobs, run_step
from services.common.storage import artifacts
from services.common.contract.errors import ValidationError
from services.common.jobs.record import spec_hash
from services.common.storage.factory import store_from_env
from services.common.storage.store import ObjectStore
from services.common.data.tasks import get_task

EXPERIMENT = "evaluate-missing"


def evaluated_tasks(store: ObjectStore) -> dict[str, set[str]]:
    """model -> the tasks some committed evaluation of it covers."""
    out: dict[str, set[str]] = {}
    for prefix in artifacts.list_committed(store, "evaluations"):
        m = artifacts.read_manifest(store, "evaluations", prefix) or {}
        out.setdefault(prefix.split("/", 1)[0], set()).update(m.get("tasks", []))
    return out


def missing_evaluations(store: ObjectStore, tasks: list[str], pattern: str = "*") -> list[tuple[str, list[str]]]:
    """(model, tasks it lacks) for every committed model matching ``pattern`` (shell glob)."""
    names = [get_task(t).name for t in tasks]
    done = evaluated_tasks(store)
    out = []
    for model in artifacts.list_committed(store, "models"):
        if "/" in model or not fnmatch.fnmatch(model, pattern):
            continue
        lacking = [t for t in names if t not in done.get(model, set())]
        if lacking:
            out.append((model, lacking))
    return out


def plan_missing(store: ObjectStore, tasks: list[str], limit: int | None = None, pattern: str = "*",
                 batch_size: int | None = None, max_new_tokens: int | None = None) -> list[Step]:
    if not tasks:
        raise ValidationError("tasks: at least one task (e.g. --task ai2_arc)")
    if limit is not None and limit < 1:
        raise ValidationError(f"limit: {limit} must be >= 1")
    steps = []
    for model, lacking in missing_evaluations(store, tasks, pattern):
        spec: dict[str, Any] = {"model": model, "tasks": [{"task": t, **({"limit": limit} if limit else {})}
                                                         for t in lacking]}
        spec |= {k: v for k, v in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)) if v}
        spec["eval_id"] = f"{EXPERIMENT}-{spec_hash(spec)[:10]}"
        steps.append(Step("evaluate", "evaluator", spec, f"{model}/{spec['eval_id']}", [model], {"model": model}))
    return steps


@flow(name="ftlab-evaluate-missing", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=MAX_STEPS_IN_FLIGHT))
def evaluate_missing_flow(tasks: list[str], limit: int | None = None, models: str = "*",
                          batch_size: int | None = None, max_new_tokens: int | None = None,
                          run_id: str = "", report_dir: str = DEFAULT_REPORT_DIR,
                          timeout_s: float = 12 * 3600.0) -> dict[str, Any]:
    from flows.experiment import Experiment
    logger = get_run_logger()
    started = time.time()
    steps = plan_missing(store_from_env(), tasks, limit, models, batch_size, max_new_tokens)
    logger.info("%d model(s) lack an evaluation for %s", len(steps), ", ".join(tasks))
    try:
        futures = [run_step.submit(s, EXPERIMENT, timeout_s, []) for s in steps]
        results = [f.result() for f in futures]
    except BaseException:
        cancel_jobs(EXPERIMENT)
        raise
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
    exp = Experiment(EXPERIMENT, f"Models lacking an evaluation on {', '.join(tasks)}, evaluated",
                     {"tasks": tasks, "limit": limit, "models": models}, steps, {}, [], None, "")
    command = " ".join(["ftlab evaluate-missing", *(f"--task {t}" for t in tasks),
                        *([f"--limit {limit}"] if limit else []), *([f"--models '{models}'"] if models != "*" else [])])
    report = aggregate(exp, run_id, results, str(Path(report_dir)), started, [command])
    failed = sum(r["status"] in ("failed", "blocked", "cancelled") for r in results)
    return {"experiment": EXPERIMENT, "run_id": run_id, "report": report, "steps": results,
            "table": report.pop("table"), "failed": failed}
