"""Experiment tracking in MLflow, from the service process: the job events the runtime already
receives (state, progress, metrics) become MLflow runs, params, tags and metrics.

One MLflow run per job, named like the study's model (``SmolLM2-135M-Instruct-arc_SFT_LoRa8_NoQuant``;
an evaluation: ``eval <model> <eval_id>``), in the MLflow experiment of the flow that submitted it
(the experiment name is the request id's prefix, ``Step.request_id``: ``demo:train:…``) or in
``ftlab`` for a job submitted by hand. Params: the job's resolved configuration, flattened
(``lora.r``). Tags: job id, service, kind, the model names and the manifest digests of its inputs,
the storage URIs of its outputs (links, never a second copy of the weights) and
``ftlab.parent_run_id``, the run that made the model it starts from (train → quantize → evaluate).
Metrics: per step (the x-axis) what progress events carry (loss, learning rate, tokens/s), the
child's resident memory sampled at each event, MFU per step (the job's final MFU scaled by each
step's tokens/s: MFU is linear in it), and the job's final metrics; an evaluation also logs each
headline metric's bootstrap 95% CI bounds (``ai2_arc/accuracy_ci_low``) from its ``metrics.json``.

Nothing here runs in the job's hot loop or at the door: :meth:`JobTracker.track` only puts a small
dict on a queue (under the runtime's lock), and one background thread per service imports MLflow
(lazily: the services stay importable without it) and sends batches every ``FLUSH_S`` seconds and
at each job's end. A tracker outage never fails a job: it is logged once, the buffered calls are
retried for ``RETRY_S`` seconds after the job ends, and the job record says what happened (an event
``tracking: …``: delayed and delivered, or not tracked)."""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("ftlab.tracking")

FLUSH_S = 5.0          # buffered per-step metrics go out at most this often (and at each job's end)
RETRY_S = 120.0        # after a job ends, how long its undelivered tracking is retried before "not tracked"
RETRY_EVERY_S = 5.0    # how often a failed delivery is retried
DEFAULT_EXPERIMENT = "ftlab"   # jobs submitted without a flow's request id
MAX_PARAM_CHARS = 6000         # MLflow's limit for a param value
TRACKED_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
RUN_STATUS = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED", "CANCELLED": "KILLED"}


def experiment_of(request_id: str) -> str:
    """The MLflow experiment of a job: the flow's experiment name that prefixes its request id
    (``demo:train:…`` → ``demo``), else :data:`DEFAULT_EXPERIMENT`."""
    head, sep, _ = (request_id or "").partition(":")
    return head if sep and head else DEFAULT_EXPERIMENT


def run_name(kind: str, config: dict[str, Any]) -> str:
    """The study's model name for a training or quantization; ``eval <model> <eval_id>`` for an evaluation."""
    if kind == "evaluate":
        return f"eval {config.get('model', '?')} {config.get('eval_id', '')}".strip()
    return str(config.get("output_name") or config.get("model") or kind)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → MLflow params (``lora.r`` → ``"8"``); lists of dicts (evaluation tasks) by
    index; unset (None) fields are left out."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if value is None:  # e.g. full fine-tuning's lora block: a "None" column would be an axis of nothing
            continue
        if isinstance(value, dict):
            out |= flatten(value, name + ".")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                out |= flatten(v, f"{name}.{i}.")
        else:
            out[name] = str(value)[:MAX_PARAM_CHARS]
    return out


def metric_key(name: str) -> str:
    """The job record's ``<task>__<metric>`` reads ``<task>/<metric>`` in MLflow (its grouping)."""
    return name.replace("__", "/")


@contextlib.contextmanager
def sqlite_init_lock(uri: str):
    """Several processes (three services, the flow) opening a fresh SQLite store at once would
    all run MLflow's schema migrations: the first takes a file lock beside the database, the
    others wait and then find the tables."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl
    path = uri.removeprefix("sqlite:///")
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(path + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def client(uri: str):
    """An MlflowClient on ``uri`` whose store exists (schema created once, under a lock). HTTP
    calls fail fast (our own loop retries), so an outage never holds a thread for minutes."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient
    with sqlite_init_lock(uri):  # the client's stores migrate the schema as they are made
        c = MlflowClient(tracking_uri=uri, registry_uri=uri)
        c.search_experiments(max_results=1)
        c.search_registered_models(max_results=1)
    return c


def experiment_id(c, name: str) -> str:
    """The experiment's id, created if missing (another process may create it at the same time)."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:  # a training experiment: the UI opens on its runs and charts (MLflow 3 defaults to GenAI views)
        return c.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"})
    except Exception:  # noqa: BLE001 - created meanwhile by another service: read it back
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_run(c, filter_string: str, order_by: str = "attributes.start_time DESC"):
    """The newest run across every experiment matching ``filter_string``, or None."""
    ids = [e.experiment_id for e in c.search_experiments(max_results=1000)]
    if not ids:
        return None
    runs = c.search_runs(ids, filter_string, max_results=1, order_by=[order_by])
    return runs[0] if runs else None


def model_run(c, model: str):
    """The run of the job that committed ``model`` (a training or quantization), or None."""
    return find_run(c, f"tags.`ftlab.model` = '{model}' and tags.`ftlab.kind` != 'evaluate'")


def run_link(run) -> str:
    """A relative link the MLflow UI resolves (run descriptions are Markdown)."""
    return f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"


# --------------------------------------------------------------------------- the service side

class NullTracker:
    """Tracking off (FTLAB_TRACKING_URI empty)."""

    def track(self, rec, event: dict[str, Any], pid: int | None = None) -> None:
        pass

    def close(self, timeout_s: float = 5.0) -> None:
        pass


@dataclass
class _Job:
    job_id: str
    kind: str
    service: str
    request_id: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    pending: list = field(default_factory=list)      # mlflow Metric entities not sent yet
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    tps: dict[int, float] = field(default_factory=dict)  # step -> tokens/s (for MFU per step)
    step_keys: set = field(default_factory=set)       # metrics with a curve (progress events)
    logged: dict[str, float] = field(default_factory=dict)  # single values (metrics events) already logged
    final: dict[str, Any] | None = None               # state, outputs, metrics, error, finished_at
    ended_at: float | None = None
    failures: int = 0
    first_error: str = ""
    note: str = ""                                    # the run's description (Markdown), set when it opens


class JobTracker:
    """Job events → MLflow, on one background thread. ``note(job_id, message)`` adds an event to
    the job's record (the runtime's :meth:`~services.common.jobs.runtime.JobRuntime.note`)."""

    def __init__(self, uri: str, service: str, store, note: Callable[[str, str], None]):
        self.uri, self.service, self.store, self.note = uri, service, store, note
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._client = None
        self._down_logged = False
        self._closing = False

    # -- called by the runtime, under its lock: cheap

    def track(self, rec, event: dict[str, Any], pid: int | None = None) -> None:
        item = {"job_id": rec.job_id, "type": event.get("type"), "step": event.get("step", 0),
                "metrics": dict(event.get("metrics") or {}), "time": event.get("time") or time.time(),
                "state": rec.state.value, "pid": pid}
        if item["type"] == "STATE":
            item |= {"kind": rec.kind, "service": rec.service, "request_id": rec.request_id,
                     "config": rec.config, "attempts": rec.attempts, "outputs": dict(rec.outputs),
                     "final_metrics": dict(rec.metrics), "error": rec.error}
        self._q.put(item)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name=f"{self.service}-tracking", daemon=True)
                    self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """At service shutdown: deliver what is buffered (at most ``timeout_s`` seconds)."""
        self._closing = True
        if self._thread is not None:
            self._q.put(None)  # wakes the thread now
            self._thread.join(timeout_s)

    # -- the background thread

    def _loop(self) -> None:
        jobs: dict[str, _Job] = {}
        last_flush = 0.0
        while True:
            try:
                item = self._q.get(timeout=1.0)
            except queue.Empty:
                item = None
            while item is None and self._closing and not self._q.empty():
                item = self._q.get()  # events that came before the close still count
            if item is None and self._closing:  # the service stops: one last delivery, then done
                for job in jobs.values():
                    self._deliver(job)
                return
            if item is not None:
                try:
                    self._absorb(jobs, item)
                except Exception:  # noqa: BLE001 - a malformed event must not stop tracking
                    log.exception("tracking: could not read an event of job %s", item.get("job_id"))
            since = time.time() - last_flush
            if item is not None and not self._q.empty() and since < FLUSH_S:
                continue  # a burst of events: absorb it first
            ended = not self._down_logged and any(j.final is not None for j in jobs.values())
            if ended or since >= (RETRY_EVERY_S if self._down_logged else FLUSH_S):
                last_flush = time.time()
                for job in list(jobs.values()):
                    if self._deliver(job):
                        if job.final is not None:
                            del jobs[job.job_id]
                    elif job.final is not None and time.time() - job.ended_at > RETRY_S:
                        self.note(job.job_id, f"tracking: not tracked in MLflow ({self.uri}): unreachable for "
                                              f"{RETRY_S:.0f}s after the job ended, {job.failures} attempts; "
                                              f"first error: {job.first_error}")
                        del jobs[job.job_id]

    def _absorb(self, jobs: dict[str, _Job], item: dict[str, Any]) -> None:
        from mlflow.entities import Metric
        job = jobs.get(item["job_id"])
        if job is None:
            if item["type"] != "STATE":
                return  # events of a job whose start this process did not see (none in practice)
            job = jobs[item["job_id"]] = _Job(item["job_id"], item["kind"], item["service"], item["request_id"])
        ts = int(item["time"] * 1000)
        if item["type"] == "STATE":
            job.config = item["config"]
            if item["state"] == "RUNNING" and not job.params:
                self._describe(job)
            if item["state"] in TRACKED_STATES:
                job.final = item
                job.ended_at = time.time()
                self._finals(job, ts)
            return
        step = int(item["step"])
        for k, v in item["metrics"].items():
            job.pending.append(Metric(metric_key(k), float(v), ts, step))
            (job.step_keys.add(k) if item["type"] == "PROGRESS" else job.logged.__setitem__(k, float(v)))
        if "tokens_per_s" in item["metrics"]:
            job.tps[step] = float(item["metrics"]["tokens_per_s"])
        if item["type"] == "PROGRESS" and item["pid"]:
            rss = _rss_gb(item["pid"])
            if rss is not None:
                job.pending.append(Metric("memory_rss_gb", rss, ts, step))

    def _describe(self, job: _Job) -> None:
        """Params and tags known at start: the config, names, and the inputs' manifest digests."""
        from services.common.storage import artifacts
        cfg = job.config
        job.params = flatten(cfg)
        job.tags = {"ftlab.job_id": job.job_id, "ftlab.service": job.service, "ftlab.kind": job.kind,
                    "ftlab.request_id": job.request_id, "ftlab.experiment": experiment_of(job.request_id)}
        inputs: dict[str, tuple[str, str]] = {}  # tag -> (bucket, name)
        if job.kind == "train":
            job.tags |= {"ftlab.model": cfg.get("output_name", ""), "ftlab.parent_model": cfg.get("base_model", ""),
                         "ftlab.dataset": cfg.get("dataset", ""), "ftlab.method": cfg.get("peft_method", "")}
            inputs = {"ftlab.base_model_digest": ("models", cfg.get("base_model", "")),
                      "ftlab.dataset_digest": ("datasets", cfg.get("dataset", ""))}
        elif job.kind == "quantize":
            job.tags |= {"ftlab.model": cfg.get("output_name", ""), "ftlab.parent_model": cfg.get("source_model", ""),
                         "ftlab.method": cfg.get("method", "")}
            inputs = {"ftlab.source_model_digest": ("models", cfg.get("source_model", ""))}
        elif job.kind == "evaluate":
            tasks = [t.get("task", "") for t in cfg.get("tasks", [])]
            job.tags |= {"ftlab.evaluated_model": cfg.get("model", ""), "ftlab.parent_model": cfg.get("model", ""),
                         "ftlab.tasks": ",".join(tasks)}
            inputs = {"ftlab.model_digest": ("models", cfg.get("model", ""))}
        for tag, (bucket, name) in inputs.items():
            try:
                m = artifacts.read_manifest(self.store, bucket, name) if name else None
            except Exception:  # noqa: BLE001 - storage hiccup: the digest is left out, the run still goes
                m = None
            if m is not None:
                job.tags[tag] = artifacts.manifest_digest(m)

    def _finals(self, job: _Job, ts: int) -> None:
        """At the job's end: final metrics, output links, MFU per step, an evaluation's CIs and engine."""
        from mlflow.entities import Metric
        fin = job.final
        last = max(job.tps, default=0)
        for k, v in fin["final_metrics"].items():
            if job.logged.get(k) == float(v):
                continue  # a metrics event said it already
            # a number with a curve (tokens/s) gets its job-level value under its own name
            key = metric_key(f"final_{k}" if k in job.step_keys or k == "mfu" else k)
            job.pending.append(Metric(key, float(v), ts, last))
        mfu, tps = fin["final_metrics"].get("mfu"), fin["final_metrics"].get("tokens_per_s")
        if mfu and tps:  # MFU is linear in tokens/s for a given job: the curve per step
            job.pending += [Metric("mfu", mfu * t / tps, ts, s) for s, t in job.tps.items()]
        job.tags |= {f"ftlab.output.{k}": v for k, v in fin["outputs"].items()}
        job.tags["ftlab.state"] = fin["state"]
        if fin["error"]:
            job.tags["ftlab.error"] = fin["error"][:5000]
        if job.kind == "evaluate" and fin["state"] == "SUCCEEDED" and "metrics" in fin["outputs"]:
            self._eval_details(job, fin["outputs"]["metrics"], ts)

    def _eval_details(self, job: _Job, uri: str, ts: int) -> None:
        from mlflow.entities import Metric
        from services.common.storage import artifacts
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        prefix, _, path = key.rpartition("/")
        try:
            result = artifacts.read_json(self.store, bucket, prefix, path)  # sha256-checked, as every read
        except Exception:  # noqa: BLE001 - the job's own metrics are tracked anyway
            log.warning("tracking: could not read %s for the CI bounds", uri)
            return
        rows = []
        for task, block in (result.get("datasets") or {}).items():
            for metric, ci in ((block.get("metrics") or {}).get("ci95") or {}).items():
                if ci:
                    job.pending += [Metric(f"{task}/{metric}_ci_low", float(ci[0]), ts, 0),
                                    Metric(f"{task}/{metric}_ci_high", float(ci[1]), ts, 0)]
                    value = block.get(metric, (block.get("metrics") or {}).get(metric))
                    if isinstance(value, (int, float)):
                        rows.append(f"| {task}/{metric} | {value:.3f} | [{ci[0]:.3f}, {ci[1]:.3f}] |")
        if rows:  # the scores with their intervals, readable on the run's page (the charts show one number)
            job.tags["mlflow.note.content"] = (job.note + "\n\n| metric | value | bootstrap 95% CI |\n|---|---|---|\n"
                                               + "\n".join(rows))
        engine = result.get("engine") or {}
        hw = result.get("hardware") or {}
        job.tags |= {"ftlab.engine": f"{engine.get('name', '')} {engine.get('version', '')}".strip(),
                     "ftlab.dtype": str(engine.get("dtype") or hw.get("dtype", "")),
                     "ftlab.quant_tag": str((result.get("quantization") or {}).get("quant_tag", ""))}

    def _deliver(self, job: _Job) -> bool:
        """Send what ``job`` has buffered; False (and kept) when MLflow is unreachable."""
        if job.run_id is None and not job.params and job.final is None:
            return True  # not started yet: nothing to say
        try:
            c = self._client = self._client or client(self.uri)
            if job.run_id is None:
                self._open(c, job)
            self._send(c, job)
        except Exception as exc:  # noqa: BLE001 - any tracker failure: keep the data, retry, never fail the job
            job.failures += 1
            if not job.first_error:
                job.first_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                self.note(job.job_id, f"tracking: MLflow at {self.uri} unreachable ({job.first_error}); "
                                      "the job goes on, its tracking is retried")
            if not self._down_logged:  # logged once per outage, not once per call
                self._down_logged = True
                log.warning("tracking: MLflow at %s unreachable (%s); retrying every %.0fs, jobs go on",
                            self.uri, job.first_error, RETRY_EVERY_S)
            return False
        if self._down_logged:
            self._down_logged = False
            log.info("tracking: MLflow at %s reachable again", self.uri)
        if job.first_error and job.final is not None:
            self.note(job.job_id, f"tracking: delivered to MLflow after {job.failures} failed attempt(s) "
                                  f"(run {job.run_id})")
            job.first_error = ""
        return True

    def _open(self, c, job: _Job) -> None:
        """The job's run: found by its job id (a restarted service, a retried attempt), else created
        in its experiment, with a link to the run of the model it starts from."""
        existing = find_run(c, f"tags.`ftlab.job_id` = '{job.job_id}'")
        if existing is not None:
            job.run_id = existing.info.run_id
            return
        exp_id = experiment_id(c, experiment_of(job.request_id))
        tags = dict(job.tags)
        parent = model_run(c, tags.get("ftlab.parent_model", "")) if tags.get("ftlab.parent_model") else None
        note = [f"ftlab {job.kind} job `{job.job_id}` ({job.service})."]
        if parent is not None:
            tags["ftlab.parent_run_id"] = parent.info.run_id
            note.append(f"Made from [{tags['ftlab.parent_model']}]({run_link(parent)}).")
        elif tags.get("ftlab.parent_model"):  # a base model: no run made it, the registry holds it
            note.append(f"Made from [{tags['ftlab.parent_model']}](#/models/{tags['ftlab.parent_model']}) "
                        "(a base model: in the model registry).")
        job.note = tags["mlflow.note.content"] = " ".join(note)
        run = c.create_run(exp_id, start_time=int(time.time() * 1000), tags=tags,
                           run_name=run_name(job.kind, job.config))
        job.run_id = run.info.run_id
        job.tags = {}

    def _send(self, c, job: _Job) -> None:
        from mlflow.entities import Param, RunTag
        params = [Param(k, v) for k, v in job.params.items()]
        tags = [RunTag(k, v) for k, v in job.tags.items()]
        metrics = list(job.pending)
        # MLflow's limits per batch: 100 params, 100 tags, 1000 entries in all
        c.log_batch(job.run_id, metrics=metrics[:800], params=params[:100], tags=tags[:100])
        for i in range(100, max(len(params), len(tags)), 100):
            c.log_batch(job.run_id, params=params[i:i + 100], tags=tags[i:i + 100])
        for j in range(800, len(metrics), 1000):
            c.log_batch(job.run_id, metrics=metrics[j:j + 1000])
        job.params, job.tags, job.pending = {}, {}, []
        if job.final is not None:
            c.set_terminated(job.run_id, RUN_STATUS[job.final["state"]], int(job.final["time"] * 1000))


def _rss_gb(pid: int) -> float | None:
    """Resident memory of the job's process and its children (GiB), or None once it is gone."""
    import psutil
    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
        return round(sum(q.memory_info().rss for q in procs) / 2 ** 30, 4)
    except (psutil.Error, OSError):
        return None


def tracker_for(service: str, store, note: Callable[[str, str], None], uri: str | None = None):
    """The service's tracker: a :class:`JobTracker` when FTLAB_TRACKING_URI is set, else a no-op."""
    from services.common.contract.settings import tracking_uri
    uri = tracking_uri() if uri is None else uri
    return JobTracker(uri, service, store, note) if uri else NullTracker()
