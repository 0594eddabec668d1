"""The experiment flow: train -> quantize -> evaluate -> aggregate, as Prefect tasks.

Each step is an idempotent submit (request id from the experiment and the step's spec hash),
a bounded wait through the service client, and a typed outcome. A step whose artifact is
already committed is skipped, so rerunning after a crash only does what is missing. One failed
configuration does not stop the others; its dependants are skipped and the report lists it.
Model bytes never pass through Prefect: only names and URIs do."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE

from flows.aggregate import summary_table, write_report
from flows.experiment import Experiment, Step, load
from services.common import artifacts
from services.common.clients import JobFailed, ServiceClient
from services.common.errors import FtlabError
from services.common.s3_store import store_from_env

STAGES = ("train", "quantize", "evaluate")
BUCKET = {"train": "models", "quantize": "models", "evaluate": "evaluations"}


def already_done(store, step: Step) -> bool:
    return artifacts.read_manifest(store, BUCKET[step.stage], step.output) is not None


# Skipping is decided by the committed manifest, not by Prefect's cache.
@task(name="run-step", task_run_name="{step.stage}:{step.output}", cache_policy=NO_CACHE)
def run_step(step: Step, experiment: str, timeout_s: float) -> dict[str, Any]:
    logger = get_run_logger()
    result = {"key": step.key, "stage": step.stage, "output": step.output}
    store = store_from_env()
    if already_done(store, step):
        logger.info("%s: already committed, skipped", step.key)
        return result | {"status": "skipped"}
    with ServiceClient(step.service) as client:
        last = {"pct": -1}

        def on_event(ev):
            if ev.total and (pct := int(100 * ev.step / ev.total)) // 25 != last["pct"] // 25:
                last["pct"] = pct
                logger.info("%s: %d/%d %s", step.key, ev.step, ev.total, ev.message)
        try:
            job = client.run(step.spec, step.request_id(experiment), timeout_s, on_event)
        except JobFailed as exc:
            logger.error("%s failed: %s", step.key, exc.job.error)
            return result | {"status": "failed", "job_id": exc.job.job_id, "error": exc.job.error}
        except (FtlabError, TimeoutError) as exc:
            logger.error("%s failed: %s", step.key, exc)
            return result | {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    logger.info("%s: succeeded (job %s)", step.key, job.job_id)
    return result | {"status": "succeeded", "job_id": job.job_id, "metrics": dict(job.metrics),
                     "outputs": dict(job.outputs)}


@flow(name="ftlab-experiment", log_prints=True)
def experiment_flow(experiment: str, run_id: str = "", report_dir: str = ".ftlab/reports") -> dict[str, Any]:
    exp: Experiment = load(experiment)
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
    logger = get_run_logger()
    results: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        futures = {}
        for step in exp.stage(stage):
            blocked = [d for d in step.after if results.get(f"train:{d}", {}).get("status") == "failed"
                       or results.get(f"quantize:{d}", {}).get("status") == "failed"]
            if blocked:
                results[step.key] = {"key": step.key, "stage": stage, "output": step.output, "status": "failed",
                                     "error": f"not run: upstream {', '.join(blocked)} failed"}
                continue
            # Submitted together: the services' queues decide what runs concurrently.
            futures[step.key] = run_step.submit(step, exp.name, exp.timeouts_s[stage])
        for key, fut in futures.items():
            results[key] = fut.result()
    store = store_from_env()
    evaluations = [tuple(s.output.rsplit("/", 1)) for s in exp.stage("evaluate")
                   if results[s.key]["status"] in ("succeeded", "skipped")]
    table = summary_table(store, evaluations)
    steps = [results[s.key] for s in exp.steps]
    report = write_report(store, exp.name, run_id, table, steps, Path(report_dir) / exp.name / run_id)
    failed = [s for s in steps if s["status"] == "failed"]
    logger.info("experiment %s run %s: %d steps, %d failed; report %s", exp.name, run_id, len(steps),
                len(failed), report["uri"])
    return {"experiment": exp.name, "run_id": run_id, "report": report, "steps": steps,
            "table": table.to_dict(orient="records"), "failed": len(failed)}
