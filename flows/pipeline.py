"""The experiment flow: data import -> train -> quantize -> evaluate -> aggregate, as Prefect tasks.

Each step is an idempotent submit (request id from the experiment and the step's spec hash),
a bounded wait through the service client, and a typed outcome. A step whose artifact is
already committed is skipped, so rerunning after a crash only does what is missing. Every step
is submitted at once and starts as soon as the models it needs exist: the services' queues
decide what runs concurrently (one training job per GPU). One failed configuration does not
stop the others; its dependants are marked blocked and the report lists both. Cancelling or
interrupting the flow run cancels its jobs in the services. Model bytes never pass through
Prefect: only names and URIs do."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows import selection
from flows.experiment import Experiment, Step, load
from services.common.storage import artifacts
from services.common.rpc import clients
from services.common.rpc.clients import JobFailed, ServiceClient, state_name
from services.common.contract.errors import FtlabError
from services.common.generated.ftlab.v1 import jobs_pb2
from services.common.jobs.record import JobState
from services.common.storage.factory import store_from_env
from services.common.contract.settings import SERVICES
from services.common.tracking.flowrun import FlowRunTracker

DEFAULT_REPORT_DIR = ".ftlab/reports"
ACTIVE = (JobState.QUEUED, JobState.RUNNING)
MAX_STEPS_IN_FLIGHT = 512
# Set when this process's flow is interrupted: its step threads keep running after the main thread
# cancelled the jobs, and one whose upstream just finished must not submit a new job.
_STOPPING: set[str] = set()
CANCEL_THREADS = 8  # CancelJob calls in flight at once per service when a flow stops


def already_done(store, step: Step) -> bool:
    """The step's output artifact is committed now (its manifest exists): not a job's old state."""
    return artifacts.read_manifest(store, step.bucket, step.output) is not None


def _logger():
    """The Prefect run logger; the module logger when called outside a run (``run_step.fn``)."""
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - prefect's MissingContextError
        import logging
        return logging.getLogger("ftlab.flows")


def cancel_jobs(experiment: str) -> list[str]:
    """Cancel every queued or running job of this experiment in the three services. The request
    ids are derived from the experiment name (``Step.request_id``), so this finds the run's jobs
    even from another process (a Prefect cancellation hook). Returns '<service>/<job_id>' of
    the jobs asked to cancel."""
    from services.common.generated.ftlab.v1 import jobs_pb2
    from concurrent.futures import ThreadPoolExecutor
    states = [jobs_pb2.JobState.Value(f"JOB_STATE_{s.value}") for s in ACTIVE]  # QUEUED, RUNNING
    cancelled = []
    for service in SERVICES:
        try:
            with ServiceClient(service) as client:
                ours = [j.job_id for j in client.list_all(states) if j.request_id.startswith(f"{experiment}:")]
                with ThreadPoolExecutor(CANCEL_THREADS) as pool:  # a phase's width in seconds
                    list(pool.map(client.cancel, ours))
                cancelled += [f"{service}/{job_id}" for job_id in ours]
        except FtlabError:  # a service that is down has nothing running for us
            continue
    return cancelled


def _cancel_hook(flow, flow_run, state) -> None:
    """on_cancellation / on_crashed. Prefect calls hooks with keyword arguments ``flow``,
    ``flow_run``, ``state`` (so these names are fixed); under a worker they run in the worker's
    process (a killed flow process runs nothing), so this re-reads the experiment from the run's
    parameters and reaches the services through the worker's FTLAB_* environment."""
    try:
        name = load(flow_run.parameters["experiment"]).name
    except Exception:  # noqa: BLE001 - an unloadable spec never submitted anything
        return
    done = cancel_jobs(name)
    print(f"flow run {state.name.lower()}: cancelled {len(done)} job(s) of {name}: {', '.join(done)}")


# ----------------------------------------------------------------------------- tasks

@task(name="import-data", cache_policy=NO_CACHE)
def import_data(exp: Experiment) -> list[dict[str, Any]]:
    """Datasets the plan reads that storage lacks, imported from the spec's data source (in the
    flow: data import is torch-free and quick)."""
    from services.common.data.importing import import_dataset
    store, out = store_from_env(), []
    for name in exp.datasets:
        step = {"key": f"data:{name}", "stage": "data", "output": name}
        if artifacts.read_manifest(store, "datasets", name) is not None:
            out.append(step | {"status": "skipped"})
        elif name in (exp.data or {}).get("prepare", {}):
            out.append(step | prepare_dataset(store, name, exp.data["prepare"][name]))
        elif not exp.data:
            out.append(step | {"status": "failed", "error": f"dataset {name!r} is not in storage and the spec has "
                                                             f"no data section; run `ftlab data import --task {name}`"})
        else:
            try:
                m = import_dataset(store, name, exp.data.get("source", "seed"), exp.data.get("path"))
                out.append(step | {"status": "succeeded", "outputs": {"dataset": m["uri"]}})
            except (FtlabError, OSError) as exc:
                out.append(step | {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
    return out


def prepare_dataset(store, name: str, recipe: str) -> dict[str, Any]:
    """A data step that draws dataset ``name`` from raw files by a recipe (``ftlab data prepare``)."""
    from services.common.data.prepare import prepare
    try:
        m = prepare(store, recipe, name=name)
    except (FtlabError, OSError) as exc:
        return {"status": "failed", "error": f"prepare {recipe}: {type(exc).__name__}: {exc}"}
    return {"status": "succeeded", "outputs": {"dataset": m["uri"], "recipe": str(recipe)}}


# Skipping is decided by the committed manifest, not by Prefect's cache.
@task(name="run-step", task_run_name="{step.stage}:{step.output}", cache_policy=NO_CACHE)
def run_step(step: Step, experiment: str, timeout_s: float, upstream: list[dict[str, Any]]) -> dict[str, Any]:
    logger = _logger()
    result = {"key": step.key, "stage": step.stage, "output": step.output, "labels": step.labels}
    if experiment in _STOPPING:
        return result | {"status": "cancelled", "error": "the flow run was interrupted before this step started"}
    store = store_from_env()
    if (not_run := selection.gated(step, upstream)) is not None:  # another learning rate was chosen
        return result | not_run
    if step.stage == selection.STAGE:
        return selection.run_select(step, upstream, store)
    reruns: list[str] = []  # why earlier jobs of this step were not reused (the report shows it)

    def on_retry(reason: str) -> None:
        reruns.append(reason)
        logger.warning("%s: %s", step.key, reason)
    if already_done(store, step):
        from flows.identity import step_status
        status, why = step_status(store, step)
        if status == "conflict":  # the flow refuses these before it starts; one made meanwhile fails here
            return result | {"status": "failed", "error": f"{step.bucket}/{step.output} exists but was made by "
                                                          f"another configuration: {why}"}
        logger.info("%s: already committed, skipped", step.key)
        return result | {"status": "skipped"}
    bad = [u["key"] for u in upstream if u["status"] in ("failed", "blocked", "cancelled")]
    if bad:
        return result | {"status": "blocked", "error": f"not run: {', '.join(bad)} did not succeed"}
    t0 = time.time()
    try:
        # one connection per service for the whole flow, and at most clients.MAX_WATCH_STREAMS
        # streams on it: the other steps poll GetJob with backoff (a phase of any width)
        client = clients.shared(step.service)
        last = {"pct": -1}

        def on_event(ev):
            if ev.total and (pct := int(100 * ev.step / ev.total)) // 25 != last["pct"] // 25:
                last["pct"] = pct
                logger.info("%s: %d/%d %s", step.key, ev.step, ev.total, ev.message)
        job = client.run(step.spec, step.request_id(experiment), timeout_s, on_event,
                         committed=lambda _job: already_done(store, step), on_retry=on_retry,
                         cancel_on_timeout=True)
    except JobFailed as exc:
        status = "cancelled" if state_name(exc.job.state) == "CANCELLED" else "failed"
        logger.error("%s %s: %s", step.key, status, exc.job.error)
        return result | {"status": status, "job_id": exc.job.job_id, "error": exc.job.error or status,
                         "wall_s": round(time.time() - t0, 2)}
    except (FtlabError, TimeoutError) as exc:
        logger.error("%s failed: %s", step.key, exc)
        return result | {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # noqa: BLE001 - one broken step must not stop the others
        logger.exception("%s failed unexpectedly", step.key)
        return result | {"status": "failed", "error": f"unexpected {type(exc).__name__}: {exc}"}
    logger.info("%s: succeeded (job %s)", step.key, job.job_id)
    if job.state == jobs_pb2.JOB_STATE_SUCCEEDED and not already_done(store, step):  # e.g. deleted meanwhile
        return result | {"status": "failed", "job_id": job.job_id, "rerun": "; ".join(reruns),
                         "error": f"job {job.job_id} SUCCEEDED but {step.bucket}/{step.output} is not committed"}
    return result | {"status": "succeeded", "job_id": job.job_id, "metrics": dict(job.metrics),
                     "outputs": dict(job.outputs), "wall_s": round(time.time() - t0, 2)} | (
        {"rerun": "; ".join(reruns)} if reruns else {})


@task(name="aggregate", cache_policy=NO_CACHE)
def aggregate(exp: Experiment, run_id: str, steps: list[dict[str, Any]], report_dir: str,
              started_at: float, commands: list[str] | None = None) -> dict[str, Any]:
    from flows.report import RunInfo, build_report
    info = RunInfo(experiment=exp.name, run_id=run_id, source=exp.source, description=exp.description,
                   started_at=started_at, finished_at=time.time(), spec=exp.raw, commands=commands or [])
    return build_report(store_from_env(), info, steps, Path(report_dir) / exp.name / run_id)


# ----------------------------------------------------------------------------- the flow

def _submit_all(exp: Experiment) -> dict[str, Any]:
    """Every step at once, each waiting (in its own thread) for the steps producing its inputs.
    Submission order is the plan's order, so a thread never waits on a step not yet started."""
    futures: dict[str, Any] = {}
    producer = {s.output: s.key for s in exp.steps}  # models, and the evaluations a select step reads
    for step in exp.steps:
        upstream = [futures[producer[d]] for d in step.after if d in producer]
        futures[step.key] = run_step.submit(step, exp.name, exp.timeouts_s.get(step.stage, 0.0), upstream)
    return futures


# A step waiting on its job (or its upstream) holds only an idle thread; threads start lazily.
@flow(name="ftlab-experiment", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=MAX_STEPS_IN_FLIGHT),
      on_cancellation=[_cancel_hook], on_crashed=[_cancel_hook])
def experiment_flow(experiment: str, run_id: str = "", report_dir: str = DEFAULT_REPORT_DIR,
                    seeds: list[int] | None = None) -> dict[str, Any]:
    """Run one experiment spec (a shipped name such as ``phase1`` or a path to a YAML file);
    ``seeds`` replaces its ``seeds:``. A step whose name storage holds for another configuration
    refuses the whole run before anything is submitted (flows/identity.py)."""
    from flows.door import checked
    exp: Experiment = checked(experiment, seeds, store_from_env(), run=True)  # every problem, before any step
    _STOPPING.discard(exp.name)  # an earlier interrupted run of it in this process
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
    logger = get_run_logger()
    started = time.time()
    data_steps = import_data(exp)
    # MLflow: a parent run for this flow run from now on, its jobs' runs nested under it as they start
    tracked = FlowRunTracker(exp.name, run_id, [s.request_id(exp.name) for s in exp.steps], started)
    try:
        futures = _submit_all(exp)
        results = {key: fut.result() for key, fut in futures.items()}
    except BaseException:  # KeyboardInterrupt, Prefect's TerminationSignal, a crash: stop our jobs
        _STOPPING.add(exp.name)  # first: no step thread submits anything from now on
        done = cancel_jobs(exp.name)
        time.sleep(2.0)  # a thread past the check may be submitting right now: catch its job too
        done += [j for j in cancel_jobs(exp.name) if j not in done]
        logger.warning("interrupted: cancelled %d job(s): %s", len(done), ", ".join(done))
        tracked.finish(data_steps, status="KILLED")
        raise
    steps = data_steps + [results[s.key] for s in exp.steps]
    report = aggregate(exp, run_id, steps, report_dir, started)
    tracked.finish(steps, report["uri"])  # MLflow: every step's job under the flow run, which ends
    from flows.publish import publish
    publish(exp.name, run_id, report)   # comparison/summary tables and the report link in the Prefect UI
    failed = [s for s in steps if s["status"] in ("failed", "blocked", "cancelled")]
    logger.info("experiment %s run %s: %d steps, %d not done; report %s", exp.name, run_id, len(steps),
                len(failed), report["uri"])
    return {"experiment": exp.name, "run_id": run_id, "report": report, "steps": steps,
            "table": report.pop("table"), "failed": len(failed)}
