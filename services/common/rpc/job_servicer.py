"""The four job RPCs every service offers (GetJob, ListJobs, WatchJob, CancelJob) and the
domain <-> proto translation. Servicers inherit :class:`JobMethods` and add their Submit RPC."""
from __future__ import annotations

import asyncio
import logging
import math

from google.protobuf import json_format, timestamp_pb2

from services.common.contract.errors import FtlabError, NotFoundError, ValidationError, shorten
from services.common.contract.validation import unknown_proto_fields
from services.common.generated.ftlab.v1 import jobs_pb2
from services.common.jobs.record import EventType, JobRecord, JobState
from services.common.contract.naming import check_name
from services.common.jobs.runtime import JobRuntime
from services.common.contract.settings import max_message_bytes

log = logging.getLogger("ftlab.validation")

PAGE_MARGIN_BYTES = 1024  # room for the page token and framing
SPEC_FIELD = {"train": "train", "quantize": "quantize", "evaluate": "evaluate"}  # kind -> Job.spec oneof


def state_to_proto(state: JobState) -> int:
    return jobs_pb2.JobState.Value(f"JOB_STATE_{state.value}")


def state_from_proto(value: int) -> JobState:
    name = jobs_pb2.JobState.Name(value)
    if value == 0:
        raise ValidationError("job state must be set (JOB_STATE_UNSPECIFIED is not a state)")
    return JobState(name.removeprefix("JOB_STATE_"))


def _ts(t: float | None) -> timestamp_pb2.Timestamp | None:
    if t is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def spec_to_dict(message) -> dict:
    """A spec message as plain JSON-able data (proto field names; unset optionals omitted).
    NaN and infinities are refused here, for every float field of every spec: proto JSON spells
    them as strings, which no range check downstream would expect; so are fields this server does
    not know (strict: a newer client's setting is refused, not silently dropped)."""
    bad = [f"{path}: must be a finite number" for path in _non_finite(message)] + unknown_proto_fields(message)
    if bad:
        raise ValidationError(bad)
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _non_finite(message, prefix: str = "") -> list[str]:
    out = []
    for field, value in message.ListFields():
        path = prefix + field.name
        values = list(value) if field.is_repeated else [value]
        for i, v in enumerate(values):
            where = f"{path}[{i}]" if field.is_repeated else path
            if field.type == field.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
                out += _non_finite(v, where + ".")
            elif field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT) and not math.isfinite(v):
                out.append(where)
    return out


def _clear_non_finite(message) -> None:
    """Clear every field of ``message`` (in place) that :func:`_non_finite` names."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            for v in (list(value) if field.is_repeated else [value]):
                _clear_non_finite(v)
        elif field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
            if any(not math.isfinite(v) for v in (list(value) if field.is_repeated else [value])):
                message.ClearField(field.name)


def record_to_proto(rec: JobRecord, queue_position: int = 0) -> jobs_pb2.Job:
    job = jobs_pb2.Job(job_id=rec.job_id, service=rec.service, request_id=rec.request_id,
                       state=state_to_proto(rec.state), error=rec.error, outputs=rec.outputs,
                       metrics=rec.metrics, progress_step=rec.progress_step,
                       progress_total=rec.progress_total, queue_position=queue_position)
    for name in ("created_at", "started_at", "finished_at"):
        ts = _ts(getattr(rec, name))
        if ts is not None:
            getattr(job, name).CopyFrom(ts)
    json_format.ParseDict(rec.spec, getattr(job, SPEC_FIELD[rec.kind]), ignore_unknown_fields=True)
    return job


def event_to_proto(job_id: str, ev: dict) -> jobs_pb2.JobEvent:
    return jobs_pb2.JobEvent(job_id=job_id, seq=ev["seq"], time=_ts(ev["time"]),
                             type=jobs_pb2.EventType.Value(f"EVENT_TYPE_{EventType(ev['type']).value}"),
                             state=state_to_proto(JobState(ev["state"])), step=ev["step"],
                             total=ev["total"], message=ev["message"], metrics=ev["metrics"])


def _require_id(job_id: str, field: str = "job_id") -> str:
    """Job ids are names (``train-20261130-001122-1a2b3c4d``): a malformed one is INVALID_ARGUMENT."""
    if not job_id:
        raise ValidationError(f"{field}: required")
    problems = check_name(field, job_id)
    if problems:
        raise ValidationError(problems)
    return job_id


def _guarded(resolve, spec: dict, store) -> dict:
    """Run the door's checks; a check that crashes (a bug: e.g. one running on a value another
    check refused) still answers INVALID_ARGUMENT, never INTERNAL, and is logged with its traceback
    so it gets fixed. Nothing has been written at this point."""
    try:
        return resolve(spec, store)
    except FtlabError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported to the caller, logged for us
        log.exception("validation crashed on a request (a bug in the checks; answered INVALID_ARGUMENT)")
        raise ValidationError(f"spec: could not be validated ({type(exc).__name__}: "
                              f"{shorten(str(exc), 200)}); the request was refused and nothing was written") from exc


class _LoopChanges:
    """Job changes, from the runtime's threads to the watchers on one event loop. A watcher waits
    on its job's current Event; on a change the loop compares each watched job's mark
    (:meth:`JobRuntime.change_marks`) with the last one seen and sets only the Events of the jobs
    that changed, so a change costs one look per watched job, not one wake-up per watcher.
    Changes coming faster than the loop runs collapse into one look."""

    def __init__(self, loop: asyncio.AbstractEventLoop, runtime: JobRuntime):
        self.loop, self.runtime = loop, runtime
        self._events: dict[str, asyncio.Event] = {}  # job id -> the Event its watchers wait on now
        self._seen: dict[str, tuple] = {}
        self._scheduled = False

    def event(self, job_id: str) -> asyncio.Event:
        return self._events.setdefault(job_id, asyncio.Event())

    def notify(self) -> None:  # any thread, under the runtime's lock: schedule only
        if not self._scheduled and not self.loop.is_closed():
            self._scheduled = True
            self.loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        self._scheduled = False
        marks = self.runtime.change_marks(list(self._events))
        for job_id, mark in marks.items():
            if mark != self._seen.get(job_id):
                self._seen[job_id] = mark
                self._events.pop(job_id).set()  # its watchers look again; the next wait gets a new Event
        for job_id in [j for j in self._seen if j not in self._events and j not in marks]:
            del self._seen[job_id]


class JobMethods:
    """Mixin: the job RPCs, delegating to ``self.runtime``, and the one way a Submit RPC works."""

    def __init__(self, runtime: JobRuntime, store) -> None:
        self.runtime, self.store = runtime, store
        self._loop_changes: _LoopChanges | None = None

    def submit(self, kind: str, request, resolve) -> jobs_pb2.Job:
        """proto spec -> dict -> validated at the door by ``resolve(spec, store)`` -> queued job."""
        bad = _non_finite(request.spec)
        if bad:  # refused, with every other problem the door finds in the rest of the spec
            rest = type(request.spec)()
            rest.CopyFrom(request.spec)
            _clear_non_finite(rest)
            problems = [f"{path}: must be a finite number" for path in bad]
            try:
                _guarded(resolve, spec_to_dict(rest), self.store)
            except ValidationError as exc:
                problems += exc.problems
            except NotFoundError as exc:
                problems.append(str(exc))
            except FtlabError:
                pass  # a precondition is reported once the request is valid
            raise ValidationError(problems)
        spec = spec_to_dict(request.spec)
        rec = self.runtime.submit(kind, spec, lambda: _guarded(resolve, spec, self.store), request.request_id)
        return self.job_proto(rec)

    def job_proto(self, rec: JobRecord) -> jobs_pb2.Job:
        queued = rec.state is JobState.QUEUED  # only a queued job has a position (a scan of the queue)
        return record_to_proto(rec, self.runtime.queue_position(rec.job_id) if queued else 0)

    # GetJob, ListJobs, CancelJob and WatchJob are coroutines: the asyncio server runs them on its
    # event loop (each holds the runtime's lock only briefly), never queued behind the Submits on
    # the worker threads (services/common/rpc/server.py).

    async def GetJob(self, request, context):
        return self.job_proto(self.runtime.get(_require_id(request.job_id)))

    async def ListJobs(self, request, context):
        problems = []
        if request.page_size < 0:
            problems.append("page_size: must be >= 0")
        states = set()
        for s in request.states:
            try:
                states.add(state_from_proto(s))
            except (ValueError, ValidationError) as exc:
                problems.append(f"states: {exc}")
        if request.page_token:
            problems += check_name("page_token", request.page_token)
        if problems:
            raise ValidationError(problems)
        recs, token = self.runtime.list(states or None, request.page_size, request.page_token)
        # bounded in bytes too: the page ends early (at least one job) before it would pass the limit
        budget, jobs = max_message_bytes() - PAGE_MARGIN_BYTES, []
        for i, rec in enumerate(recs):
            job = self.job_proto(rec)
            budget -= job.ByteSize() + 8  # + the field's tag and length
            if budget < 0 and jobs:
                token = recs[i - 1].job_id
                break
            jobs.append(job)
        return jobs_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def WatchJob(self, request, context):
        """A coroutine per stream, woken when a job changes: no thread is held while it waits, and
        a client hanging up cancels it."""
        job_id = _require_id(request.job_id)
        if request.after_seq < 0:
            raise ValidationError("after_seq: must be >= 0")
        self.runtime.get(job_id)  # NOT_FOUND before the stream starts
        changes = self._changes()
        after_seq, saved_by = request.after_seq, None
        while True:
            changed = changes.event(job_id)  # taken before looking, so a change meanwhile is not missed
            new, done, saved_by = self.runtime.events_after(job_id, after_seq, saved_by)
            for ev in new:
                yield event_to_proto(job_id, ev)
                after_seq = ev["seq"]
            if done:
                return
            if not new:
                try:  # a finished job's record may be saved any moment: look every second then
                    await asyncio.wait_for(changed.wait(), 1.0 if saved_by else 10.0)
                except asyncio.TimeoutError:
                    pass

    def _changes(self) -> "_LoopChanges":
        """This servicer's bridge from the runtime's changes to the event loop, made on first use."""
        if self._loop_changes is None:
            self._loop_changes = _LoopChanges(asyncio.get_running_loop(), self.runtime)
            self.runtime.add_listener(self._loop_changes.notify)
        return self._loop_changes

    async def CancelJob(self, request, context):
        return self.job_proto(self.runtime.cancel(_require_id(request.job_id)))
