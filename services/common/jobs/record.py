"""Job records and events: the domain model every service shares (torch-free)."""
from __future__ import annotations

import enum
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from services.common.contract.errors import shorten

JOBS_BUCKET = "jobs"  # job records: <service>/<job_id>.json; leases: leases/<service>/<job_id>
MAX_EVENTS = 5000  # per job; older events are dropped (the record stays small in storage)
# A job's error text and each event's message (log lines) are capped, head and tail kept with the
# number of characters cut between them: one huge traceback or log line must not make the record,
# GetJob or a ListJobs page exceed gRPC's message limit.
MAX_JOB_ERROR_CHARS = 8_000      # <= 32 KB of UTF-8: a Job always fits the 64 KiB minimum message limit
MAX_EVENT_MESSAGE_CHARS = 2_000


class JobState(str, enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"

    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


# Nothing leaves a terminal state; CANCELLING may still end SUCCEEDED or FAILED when the child
# finished or crashed before the signal landed.
_ALLOWED = {
    JobState.QUEUED: {JobState.RUNNING, JobState.CANCELLED, JobState.FAILED},
    # RUNNING -> QUEUED only when a restarted service re-queues a job its crash interrupted.
    JobState.RUNNING: {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLING, JobState.QUEUED},
    JobState.CANCELLING: {JobState.CANCELLED, JobState.FAILED, JobState.SUCCEEDED},
}


class EventType(str, enum.Enum):
    STATE = "STATE"
    PROGRESS = "PROGRESS"
    LOG = "LOG"
    METRICS = "METRICS"


def now() -> float:
    return time.time()


def new_job_id(kind: str) -> str:
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def spec_hash(spec: dict[str, Any]) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class JobRecord:
    job_id: str
    service: str
    kind: str                       # train | quantize | evaluate
    spec: dict[str, Any]            # the request's spec, as submitted (proto field names)
    config: dict[str, Any]          # the spec with defaults resolved: what the child runs
    request_id: str = ""
    state: JobState = JobState.QUEUED
    created_at: float = field(default_factory=now)
    started_at: float | None = None
    finished_at: float | None = None
    error: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    progress_step: int = 0
    progress_total: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0               # how many times a child started on it (restarts re-queue)

    def add_event(self, type: EventType, message: str = "", step: int = 0, total: int = 0,
                  metrics: dict[str, float] | None = None) -> dict[str, Any]:
        seq = self.events[-1]["seq"] + 1 if self.events else 1
        ev = {"seq": seq, "time": now(), "type": type.value, "state": self.state.value,
              "step": step, "total": total, "message": shorten(message, MAX_EVENT_MESSAGE_CHARS), "metrics": dict(metrics or {})}
        self.events.append(ev)
        del self.events[:-MAX_EVENTS]
        return ev

    def set_error(self, text: str) -> None:
        """The job's error text, capped at ``MAX_JOB_ERROR_CHARS`` (head and tail kept)."""
        self.error = shorten(text, MAX_JOB_ERROR_CHARS)

    def transition(self, new: JobState, message: str = "") -> dict[str, Any]:
        if new not in _ALLOWED.get(self.state, set()):
            raise RuntimeError(f"job {self.job_id}: illegal transition {self.state.value} -> {new.value}")
        self.state = new
        if new is JobState.RUNNING:
            self.started_at = now()
        if new.is_terminal():
            self.finished_at = now()
        return self.add_event(EventType.STATE, message or new.value)

    def to_json(self) -> bytes:
        d = asdict(self)
        d["state"] = self.state.value
        return json.dumps(d, sort_keys=True, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "JobRecord":
        d = json.loads(data)
        d["state"] = JobState(d["state"])
        known = {f for f in cls.__dataclass_fields__}
        rec = cls(**{k: v for k, v in d.items() if k in known})  # records from newer versions load
        rec.set_error(rec.error)  # records written before the cap
        return rec
