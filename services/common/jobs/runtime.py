"""The job runtime every service shares: an explicit queue, one child process per job,
events piped back, real cancel, and job records persisted in the `jobs` bucket.

A servicer only validates a request and calls :meth:`JobRuntime.submit`; the recipe (the
service's training / quantization / evaluation code) runs in a child process (forked from the
warm fork server in services/common/jobs/fork_server.py, or spawned), so a CUDA crash or an OOM kill
never takes the server down, and cancel is a signal, not a flag.

Its parts: where a job's process runs (placement.py: a local child, or a Ray actor where Ray places
it, FTLAB_PLACEMENT), the child side (services/common/jobs/child.py), the jobs' scratch folders
(scratch.py); the queue and the supervision of children are here. One runtime per service and
store: replicas sharing a store are not supported (docs/ARCHITECTURE.md, "Scheduling": more hosts
means Ray placement, not more replicas).
"""
from __future__ import annotations

import bisect
import logging
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

from services.common.contract.errors import FtlabError, NotFoundError, PreconditionError, ValidationError, quote
from services.common.jobs.record import JOBS_BUCKET, EventType, JobRecord, JobState, new_job_id, spec_hash
from services.common.jobs.scratch import hold_lock, scratch_root, sweep_stale_scratch
from services.common.storage.store import ObjectStore
from services.common.jobs import placement
from services.common.tracking.tracker import tracker_for

log = logging.getLogger("ftlab.runtime")
PERSIST_EVERY_S = 2.0  # progress is persisted at most this often; state changes always
MAX_REQUEST_ID = 256
SAVED_WAIT_S = 30.0    # how long a watch of a finished job waits for its record to be saved
RELOAD_THREADS = 16    # job records read at once when a service starts


def _extra(rec: "JobRecord | None" = None, **kw) -> dict[str, Any]:
    """``extra=`` for log records: the JSON log formatter adds job_id / request_id / service."""
    if rec is not None:
        kw.setdefault("job_id", rec.job_id)
        kw.setdefault("service", rec.service)
        if rec.request_id:
            kw.setdefault("request_id", rec.request_id)
    return kw


# --------------------------------------------------------------------------- server side

class _Changes(threading.Condition):
    """The runtime's lock and condition; every ``notify_all`` (a job changed) also calls the
    listeners (:meth:`JobRuntime.add_listener`)."""

    def __init__(self):
        super().__init__()
        self.listeners: list[Callable[[], None]] = []

    def notify_all(self) -> None:
        super().notify_all()
        for fn in self.listeners:
            fn()


@dataclass(frozen=True)
class RuntimeOptions:
    max_running: int = 1          # one job per device by default
    cancel_grace_s: float = 10.0  # SIGTERM, then SIGKILL after this
    max_attempts: int = 3         # child starts per job, counting re-queues after a service crash


class JobRuntime:
    """One service's jobs: a persistent queue in the ``jobs`` bucket, up to ``max_running`` child
    processes (or Ray actors), cancel (SIGTERM, then SIGKILL after
    ``cancel_grace_s`` seconds) and re-queue after a crash (at most ``max_attempts`` starts).

    ``recipes`` maps a job kind to ``"module:function"``. :meth:`submit` takes the request's spec
    (proto JSON) and a ``resolve`` callable, the service's door, which returns the job's config
    as a JSON-able dict (``TrainConfig.to_dict()`` and the like: services/<service>/config.py) or
    raises ValidationError / NotFoundError / PreconditionError listing every problem; nothing is
    written then. The record keeps spec and config; the child calls ``function(ctx, config)``
    with a JobContext (store, workdir, attempt, progress/log/metrics) and that dict, and the
    recipe's ``{"outputs": {name: uri}, "metrics": {name: float}}`` becomes the job's result."""

    def __init__(self, service: str, store: ObjectStore, recipes: dict[str, str],
                 options: RuntimeOptions = RuntimeOptions(), warm_imports: tuple[str, ...] = ()):
        self.service, self.store, self.recipes, self.options = service, store, recipes, options
        self._jobs: dict[str, JobRecord] = {}
        self._order: list[tuple[float, str]] = []   # (created_at, job_id) of every job, ascending: ListJobs' index
        self._by_request: dict[str, str] = {}
        self._queue: list[str] = []
        self._procs: dict[str, Any] = {}             # job id -> its placement handle (placement.py)
        self._cancel_requested: set[str] = set()
        self._last_persist: dict[str, float] = {}
        self._dirty: dict[str, bytes] = {}           # job id -> record JSON the writer thread saves
        self._unsaved: set[str] = set()              # jobs whose latest record is not saved yet
        self._cond = _Changes()
        self._stopping = False
        self._writer_stop = False
        self._dispatcher: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        # Where a job's process runs: a child of this service, or where Ray places it (FTLAB_PLACEMENT)
        self._launcher = placement.launcher(service, recipes.values(), warm_imports)
        self._reattached: list[str] = []   # Ray jobs a restart found running (start() supervises them)
        self._scratch: str | None = None   # jobs' work folders (start() makes it)
        self._scratch_lock = None
        self._tracker = tracker_for(service, store, self.note)  # MLflow, when FTLAB_TRACKING_URI is set

    # -- lifecycle

    def start(self) -> None:
        self.store.ensure_buckets([JOBS_BUCKET])
        swept = sweep_stale_scratch()
        if swept:
            log.info("removed scratch folders of stopped services: %s", ", ".join(swept))
        os.makedirs(scratch_root(), exist_ok=True)
        self._scratch = tempfile.mkdtemp(prefix=f"{self.service}-{os.getpid()}-", dir=scratch_root())
        self._scratch_lock = hold_lock(os.path.join(self._scratch, ".lock"))
        with self._cond:  # nothing else runs yet; _persist expects the lock
            self._recover()
        # Record writes happen on their own thread, outside the lock: a storage outage (retried for
        # FTLAB_STORAGE_RETRY_S) never blocks GetJob/WatchJob; the latest snapshot per job wins.
        self._writer = threading.Thread(target=self._write_loop, name=f"{self.service}-writer", daemon=True)
        self._writer.start()
        self._warm = self._launcher.warm_up()
        for job_id in self._reattached:
            self._supervise_in_thread(job_id, self._procs[job_id])
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name=f"{self.service}-dispatch", daemon=True)
        self._dispatcher.start()

    def _recover(self) -> None:
        """Reload history from storage, so a restarted service still knows its jobs.

        A job that was RUNNING when the service died is re-queued (at most
        ``options.max_attempts`` starts in all) and says so in its events: the trainer resumes
        from its last checkpoint, the quantizer and evaluator start again (their work is cheap).
        A job that was CANCELLING ends CANCELLED. Where Ray placed it, a RUNNING job whose actor
        still runs is supervised again, not re-run.

        The records are read RELOAD_THREADS at a time (an object store answers each read in a round
        trip), in storage's order; the listing index is sorted once at the end."""
        from concurrent.futures import ThreadPoolExecutor
        keys = [k for k in self.store.list_keys(JOBS_BUCKET, f"{self.service}/") if k.endswith(".json")]
        with ThreadPoolExecutor(RELOAD_THREADS) as pool:
            records = pool.map(lambda k: JobRecord.from_json(self.store.get_bytes(JOBS_BUCKET, k)), keys)
            self._recover_records(records)
        self._order.sort()

    def _recover_records(self, records: Iterator[JobRecord]) -> None:
        for rec in records:
            if rec.state is JobState.CANCELLING:
                rec.error = "cancelled by request"
                rec.transition(JobState.CANCELLED, f"the {self.service} service stopped while cancelling")
                self._persist(rec)
            elif rec.state is JobState.RUNNING and (handle := self._launcher.reattach(rec.job_id, rec.attempts)):
                self._procs[rec.job_id] = handle  # Ray still runs it: supervise it again, don't re-run it
                self._reattached.append(rec.job_id)
            elif rec.state is JobState.RUNNING:
                if rec.attempts >= self.options.max_attempts:
                    rec.error = (f"interrupted: the {self.service} service stopped while the job was running, "
                                 f"{rec.attempts} times; not retried again")
                    rec.transition(JobState.FAILED, rec.error)
                else:
                    self._requeue_interrupted(rec)
                self._persist(rec)
            self._jobs[rec.job_id] = rec
            self._order.append((rec.created_at, rec.job_id))
            if rec.request_id:
                self._by_request[rec.request_id] = rec.job_id
            if rec.state is JobState.QUEUED:
                self._queue.append(rec.job_id)
        self._queue.sort(key=lambda j: self._jobs[j].created_at)

    def _requeue_interrupted(self, rec: JobRecord) -> None:
        rec.transition(JobState.QUEUED, f"re-queued: the {self.service} service restarted while the job was "
                                        f"running (attempt {rec.attempts} interrupted); attempt "
                                        f"{rec.attempts + 1} runs it again from the start, or from its last "
                                        "checkpoint where the recipe keeps one")
        log.warning("job %s re-queued after an interrupted attempt %d", rec.job_id, rec.attempts, extra=_extra(rec))

    def shutdown(self, grace_s: float | None = None) -> None:
        """Stop taking jobs; terminate running children (their jobs end FAILED, with the reason)."""
        with self._cond:
            self._stopping = True
            running = list(self._procs)
            self._cond.notify_all()
        for job_id in running:
            self._kill(job_id, grace_s if grace_s is not None else self.options.cancel_grace_s)
        deadline = time.time() + 30
        with self._cond:
            while self._procs and time.time() < deadline:
                self._cond.wait(0.2)
            self._writer_stop = True
            self._cond.notify_all()
        self._tracker.close()
        if self._writer is not None:
            self._writer.join(30)  # the last records (the jobs the shutdown failed) reach storage
        if self._scratch_lock is not None:  # no job runs any more: the folder goes with its lock
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch_lock.close()
            self._scratch_lock = None

    # -- API used by servicers

    def submit(self, kind: str, spec: dict[str, Any], resolve: Callable[[], dict[str, Any]],
               request_id: str = "") -> JobRecord:
        """Queue a job. ``resolve`` validates the spec (raising a domain error listing every
        problem) and returns the config the child runs. A known ``request_id`` returns its job
        without validating again: the first submit may have produced the very output that a
        second validation would now call a conflict."""
        if kind not in self.recipes:
            raise ValidationError(f"unknown job kind {kind!r}; known: {', '.join(sorted(self.recipes))}")
        if len(request_id) > MAX_REQUEST_ID or any(ord(c) < 32 or ord(c) == 127 for c in request_id):
            raise ValidationError(f"request_id: at most {MAX_REQUEST_ID} characters, no control characters")
        with self._cond:
            existing = self._existing(request_id, spec)
            if existing is not None:
                return existing
        config = resolve()  # outside the lock: it may read storage
        with self._cond:
            existing = self._existing(request_id, spec)  # a concurrent twin may have won
            if existing is not None:
                return existing
            if self._stopping:
                raise PreconditionError(f"the {self.service} service is shutting down")
            rec = JobRecord(job_id=new_job_id(kind), service=self.service, kind=kind, spec=spec,
                            config=config, request_id=request_id)
            rec.add_event(EventType.STATE, "QUEUED")
            self._jobs[rec.job_id] = rec  # reserved: a concurrent twin with this request_id gets it
            bisect.insort(self._order, (rec.created_at, rec.job_id))
            if request_id:
                self._by_request[request_id] = rec.job_id
            data = rec.to_json()
        try:  # persisted before it is acknowledged (a crash can't lose it), outside the lock
            self.store.put_bytes(JOBS_BUCKET, self._record_key(rec.job_id), data)
        except FtlabError:
            with self._cond:
                self._jobs.pop(rec.job_id, None)
                self._order.remove((rec.created_at, rec.job_id))
                if request_id and self._by_request.get(request_id) == rec.job_id:
                    del self._by_request[request_id]
            raise
        with self._cond:
            self._queue.append(rec.job_id)
            self._cond.notify_all()
            log.info("job %s queued", rec.job_id, extra=_extra(rec))
            return self._snapshot(rec)

    def _existing(self, request_id: str, spec: dict[str, Any]) -> JobRecord | None:
        if not request_id or request_id not in self._by_request:
            return None
        existing = self._jobs[self._by_request[request_id]]
        if spec_hash(existing.spec) != spec_hash(spec):
            raise PreconditionError(f"request_id {quote(request_id)} was already used for job "
                                    f"{existing.job_id} with a different spec")
        return self._snapshot(existing)

    def get(self, job_id: str) -> JobRecord:
        with self._cond:
            return self._snapshot(self._require(job_id))

    def _record_key(self, job_id: str) -> str:
        return f"{self.service}/{job_id}.json"

    def list(self, states: set[JobState] | None = None, page_size: int = 50,
             page_token: str = "") -> tuple[list[JobRecord], str]:
        """Newest first. The page token is the last job id of the previous page (a cursor, so
        jobs submitted meanwhile don't shift the pages). A page reads only its own records (and,
        with a state filter, the ones it skips), found by bisecting the (created_at, job_id) index;
        its records come without their events (a job's events are WatchJob's)."""
        if page_size <= 0:
            page_size = 50
        page_size = min(page_size, 500)
        with self._cond:
            end = len(self._order)
            if page_token:
                after = self._jobs.get(page_token)
                if after is None:
                    raise ValidationError(f"page_token: {quote(page_token)} is not a job of this service")
                end = bisect.bisect_left(self._order, (after.created_at, after.job_id))
            recs: list[JobRecord] = []
            for i in range(end - 1, -1, -1):
                rec = self._jobs[self._order[i][1]]
                if not states or rec.state in states:
                    recs.append(rec)
                    if len(recs) > page_size:  # one more than the page: there is a next page
                        break
            page = [replace(r, events=[], outputs=dict(r.outputs), metrics=dict(r.metrics)) for r in recs[:page_size]]
            return page, (page[-1].job_id if len(recs) > page_size else "")

    def queue_position(self, job_id: str) -> int:
        with self._cond:
            return self._queue.index(job_id) + 1 if job_id in self._queue else 0

    def events_after(self, job_id: str, after_seq: int = 0, saved_by: float | None = None
                     ) -> tuple[list[dict[str, Any]], bool, float | None]:
        """One look at a job for a watcher, without waiting: (the events after ``after_seq``,
        whether the stream ends after them, ``saved_by`` to pass to the next look). A stream ends
        once the job is terminal and its final record saved (or its save failed, or
        ``SAVED_WAIT_S`` passed: storage is down)."""
        with self._cond:
            rec = self._require(job_id)
            events = rec.events
            # seqs are consecutive (the oldest are dropped past MAX_EVENTS): slice, don't scan
            start = max(0, after_seq - events[0]["seq"] + 1) if events else 0
            new = [dict(e) for e in events[start:]]
            terminal = rec.state.is_terminal()
            if terminal and not new and job_id in self._unsaved:
                # The stream ends once the final record is saved, so a
                # client that saw the end reads the same record from the store. A failed save
                # (storage down) or SAVED_WAIT_S ends it anyway; the writer keeps retrying.
                saved_by = saved_by or time.time() + SAVED_WAIT_S
                terminal = time.time() >= saved_by
            return new, terminal and not new, saved_by

    def watch(self, job_id: str, after_seq: int = 0, is_active: Callable[[], bool] = lambda: True
              ) -> Iterator[dict[str, Any]]:
        """Replay events after ``after_seq``, then follow until the job ends (:meth:`events_after`),
        blocking this thread; the gRPC WatchJob waits on :meth:`add_listener` instead."""
        saved_by = None
        while True:
            new, done, saved_by = self.events_after(job_id, after_seq, saved_by)
            if done:
                return
            if not new:
                with self._cond:
                    self._cond.wait(timeout=1.0)
                if not is_active():
                    return
            for ev in new:
                yield ev
                after_seq = ev["seq"]

    def note(self, job_id: str, message: str) -> None:
        """Add a log event to a job's record, even a finished one (the tracker says how it went)."""
        with self._cond:
            self._require(job_id).add_event(EventType.LOG, message)
            self._persist(self._jobs[job_id])

    def change_marks(self, job_ids: list[str]) -> dict[str, tuple]:
        """For each known job of ``job_ids``, a value that changes whenever a watcher of it has
        something new to see (an event, the state, its record saved)."""
        with self._cond:
            return {j: (rec.events[-1]["seq"] if rec.events else 0, rec.state, j in self._unsaved)
                    for j in job_ids if (rec := self._jobs.get(j)) is not None}

    def add_listener(self, fn: Callable[[], None]) -> None:
        """``fn()`` runs (under the runtime's lock: it must only schedule work) whenever a job
        changes, so watchers on an event loop wake without a thread each."""
        self._cond.listeners.append(fn)

    def cancel(self, job_id: str) -> JobRecord:
        with self._cond:
            rec = self._require(job_id)
            if rec.state.is_terminal() or rec.state is JobState.CANCELLING:
                return self._snapshot(rec)
            if rec.state is JobState.QUEUED and job_id not in self._procs:  # else Ray has yet to place it
                if job_id in self._queue:
                    self._queue.remove(job_id)
                rec.transition(JobState.CANCELLED, "cancelled before it started")
                rec.error = "cancelled by request"
                self._persist(rec)
                self._cond.notify_all()
                return self._snapshot(rec)
            self._cancel_requested.add(job_id)
            if rec.state is JobState.QUEUED:
                rec.add_event(EventType.LOG, "cancel requested while waiting for Ray to place it")
            else:
                rec.transition(JobState.CANCELLING, "cancel requested: SIGTERM, then SIGKILL after "
                                                     f"{self.options.cancel_grace_s:g}s")
            self._persist(rec)
            self._cond.notify_all()
        threading.Thread(target=self._kill, args=(job_id, self.options.cancel_grace_s), daemon=True).start()
        return self.get(job_id)

    # -- internals

    def _require(self, job_id: str) -> JobRecord:
        rec = self._jobs.get(job_id)
        if rec is None:
            raise NotFoundError(f"job {quote(job_id)} not found in the {self.service} service")
        return rec

    @staticmethod
    def _snapshot(rec: JobRecord) -> JobRecord:
        return replace(rec, events=list(rec.events), outputs=dict(rec.outputs), metrics=dict(rec.metrics))

    def _persist(self, rec: JobRecord, force: bool = True) -> None:
        t = time.time()
        if not force and t - self._last_persist.get(rec.job_id, 0) < PERSIST_EVERY_S:
            return
        self._last_persist[rec.job_id] = t
        self._dirty[rec.job_id] = rec.to_json()  # the writer thread saves it (called under the lock)
        self._unsaved.add(rec.job_id)
        self._cond.notify_all()

    def _write_loop(self) -> None:
        """Save dirty records one at a time (latest snapshot per job)."""
        while True:
            with self._cond:
                while not self._dirty and not self._writer_stop:
                    self._cond.wait()
                if not self._dirty:
                    return
                job_id = next(iter(self._dirty))
                data = self._dirty.pop(job_id)
            try:
                self.store.put_bytes(JOBS_BUCKET, self._record_key(job_id), data)
                with self._cond:
                    if job_id not in self._dirty:  # no newer snapshot arrived meanwhile
                        self._unsaved.discard(job_id)
                        self._cond.notify_all()  # watchers of a finished job may end now
            except Exception:  # the in-memory record stays authoritative; retried below
                log.exception("job %s: could not persist the job record; retrying", job_id, extra=_extra(job_id=job_id))
                with self._cond:
                    self._unsaved.discard(job_id)  # watchers stop waiting for it: storage is down
                    self._cond.notify_all()
                    self._dirty.setdefault(job_id, data)  # unless a newer snapshot arrived meanwhile
                    if self._writer_stop:
                        return  # shutting down with storage gone: give up, the log says so
                    self._cond.wait(1.0)

    def _next_job(self) -> str | None:
        """Under the lock: wait for a runnable job (None = stopping)."""
        while True:
            if self._stopping:
                return None
            if self._queue and (len(self._procs) < self.options.max_running or not self._launcher.limits_running):
                return self._queue.pop(0)
            self._cond.wait()

    def _dispatch_loop(self) -> None:
        # Jobs wait (queued) until the fork server has done its imports: starting a child before
        # that would block under the lock.
        while not self._warm.wait(0.5):
            if self._stopping:
                return
        while True:
            with self._cond:
                job_id = self._next_job()
                if job_id is None:
                    return
                self._start_child(self._jobs[job_id])

    def _start_child(self, rec: JobRecord) -> None:
        """Under the lock: launch the job's process, supervise it. A local child
        is RUNNING at once; a Ray job stays QUEUED until Ray has placed it (its "placed" message)."""
        job_id = rec.job_id
        rec.attempts += 1
        handle = self._launcher.launch(job_id, rec.kind, self.recipes[rec.kind], rec.attempts, rec.config,
                                       self.store.config(), self._scratch)
        if handle.placed:
            rec.transition(JobState.RUNNING, "started" if rec.attempts == 1 else f"started (attempt {rec.attempts})")
        else:
            rec.add_event(EventType.LOG, f"waiting for Ray to place it: {handle.wants}")
        self._procs[job_id] = handle
        self._persist(rec)
        self._cond.notify_all()
        handle.start()  # under the lock, so a cancel always finds a pid to signal
        self._tracker.track(rec, rec.events[-1], self._local_pid(job_id))
        self._supervise_in_thread(job_id, handle)

    def _local_pid(self, job_id: str) -> int | None:
        """The job process's pid where it is a child on this host (the tracker samples its memory);
        a Ray job's pid may belong to another node."""
        handle = self._procs.get(job_id)
        return handle.pid if isinstance(handle, placement.LocalHandle) else None

    def _supervise_in_thread(self, job_id: str, handle) -> None:
        threading.Thread(target=self._supervise, args=(job_id, handle), daemon=True,
                         name=f"supervise-{job_id}").start()

    def _on_placed(self, job_id: str, msg: dict[str, Any]) -> None:
        with self._cond:
            rec = self._jobs[job_id]
            attempt = "" if rec.attempts == 1 else f" (attempt {rec.attempts})"
            rec.transition(JobState.RUNNING, f"started{attempt}: {msg['message']}")
            self._tracker.track(rec, rec.events[-1])
            if job_id in self._cancel_requested:  # cancelled while it waited: the kill is under way
                rec.transition(JobState.CANCELLING, "cancel requested before it started")
            self._persist(rec)
            self._cond.notify_all()

    def _supervise(self, job_id: str, proc) -> None:
        result, error = None, None
        log.info("job %s: %s started", job_id, proc.where(), extra=_extra(self._jobs[job_id]))
        while True:
            try:
                msg = proc.get(timeout=0.2)
            except queue.Empty:
                if proc.is_alive():
                    continue
                try:  # drain what the child sent just before exiting
                    msg = proc.get(timeout=0.5)
                except queue.Empty:
                    break
            if msg["type"] == "placed":
                self._on_placed(job_id, msg)
            elif msg["type"] == "result":
                result = msg
            elif msg["type"] == "error":
                error = msg
                log.error("job %s failed:\n%s", job_id, msg.get("traceback", ""), extra=_extra(self._jobs[job_id]))
            else:
                self._on_event(job_id, msg)
        proc.close()  # the scratch folder goes, however the child ended; a Ray actor frees its resources
        self._finish(job_id, proc.exitcode, result, error)

    def _on_event(self, job_id: str, msg: dict[str, Any]) -> None:
        with self._cond:
            rec = self._jobs[job_id]
            etype = EventType(msg["type"])
            if etype is EventType.PROGRESS:
                rec.progress_step, rec.progress_total = msg["step"], msg["total"]
            if msg.get("metrics"):
                rec.metrics.update(msg["metrics"])
            ev = rec.add_event(etype, msg.get("message", ""), msg.get("step", 0), msg.get("total", 0), msg.get("metrics"))
            self._tracker.track(rec, ev, self._local_pid(job_id))
            self._persist(rec, force=False)
            self._cond.notify_all()
        if etype is EventType.LOG:
            log.info("job %s: %s", job_id, msg.get("message", ""), extra=_extra(rec))

    def _finish(self, job_id: str, exitcode: int | None, result: dict | None, error: dict | None) -> None:
        with self._cond:
            rec = self._jobs[job_id]
            self._procs.pop(job_id, None)
            if job_id in self._cancel_requested:
                self._cancel_requested.discard(job_id)
                rec.error = "cancelled by request"
                rec.transition(JobState.CANCELLED, f"cancelled (child exit {_describe_exit(exitcode)})")
            elif self._stopping and result is None:
                rec.error = f"interrupted: the {self.service} service shut down while the job was running"
                rec.transition(JobState.FAILED, rec.error)
            elif error and error.get("lost") and rec.attempts < self.options.max_attempts:
                # Ray lost the job's node or worker, and the child with it: run it again elsewhere
                why = (f"re-queued: {error['message']}; attempt {rec.attempts + 1} runs it again from the start, "
                       "or from its last checkpoint")
                if rec.state is JobState.RUNNING:
                    rec.transition(JobState.QUEUED, why)
                else:  # lost before Ray started it: still QUEUED
                    rec.add_event(EventType.LOG, why)
                self._queue.insert(0, job_id)
            elif result is not None and exitcode == 0:
                rec.outputs.update(result["outputs"])
                rec.metrics.update(result["metrics"])
                rec.transition(JobState.SUCCEEDED, "succeeded")
            else:
                rec.set_error(error["message"] if error else f"child process {_describe_exit(exitcode)}")
                rec.transition(JobState.FAILED, rec.error)
            # logged before anyone can see the job end: a client that saw it finish finds its log line
            log.info("job %s: %s %s", job_id, rec.state.value, rec.error, extra=_extra(rec))
            self._tracker.track(rec, rec.events[-1])
            self._persist(rec)
            self._cond.notify_all()

    def _kill(self, job_id: str, grace_s: float) -> None:
        # Only the supervisor thread reaps the child (two threads waiting on one pid race);
        # here we signal and watch for the supervisor to report the exit.
        proc = self._procs.get(job_id)
        if proc is None:
            return
        proc.signal(signal.SIGTERM)
        deadline = time.time() + grace_s
        with self._cond:
            while job_id in self._procs and time.time() < deadline:
                self._cond.wait(0.2)
            if job_id not in self._procs:
                return
        log.warning("job %s: still alive %.0fs after SIGTERM, sending SIGKILL", job_id, grace_s,
                    extra=_extra(job_id=job_id))
        proc.signal(signal.SIGKILL)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"
