"""Clients for the three services, used by the flows and the CLI. gRPC status codes come back
as the same domain errors the services raised; a job that ends badly raises :class:`JobFailed`."""
from __future__ import annotations

import math
import random
import re
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.contract.errors import FtlabError, NotFoundError, PreconditionError, StorageError, ValidationError
from services.common.generated.ftlab.v1 import (evaluate_spec_pb2, evaluator_pb2, evaluator_pb2_grpc, jobs_pb2,
                                                quantize_spec_pb2, quantizer_pb2, quantizer_pb2_grpc, train_spec_pb2,
                                                trainer_pb2, trainer_pb2_grpc)
from services.common.contract.settings import grpc_message_options, service_address

_FROM_ENV: Any = object()  # "read it from the environment"
# every 30 s while a call is open (the servers accept pings every 10 s: grpc_server.py)
CLIENT_CHANNEL_OPTIONS = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]
# A process follows at most this many jobs of one service over WatchJob streams at a time (a flow
# of any width); the others poll GetJob with backoff until a stream is free.
MAX_WATCH_STREAMS = 16
POLL_S = (0.5, 5.0)  # GetJob polling: first and longest interval

TERMINAL = {jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED}


class ServiceUnavailable(FtlabError):
    """The service did not answer (not started, crashed, or unreachable)."""


class Unauthenticated(FtlabError):
    """The service refused the call: no token, or a wrong one (FTLAB_AUTH_TOKEN)."""


class Busy(FtlabError):
    """The service is at its limits (RESOURCE_EXHAUSTED) and asked to be called again after
    ``retry_s`` seconds (its ``google.rpc.RetryInfo``)."""

    def __init__(self, message: str, retry_s: float):
        super().__init__(message)
        self.retry_s = retry_s


class JobFailed(FtlabError):
    """A job ended FAILED or CANCELLED; ``job`` is its final record."""

    def __init__(self, job: jobs_pb2.Job):
        self.job = job
        super().__init__(f"{job.service} job {job.job_id} ended {state_name(job.state)}: {job.error}")


# service -> (stub, submit RPC name, spec message, submit request message)
_SERVICES = {
    "trainer": (trainer_pb2_grpc.TrainerServiceStub, "SubmitTrain", train_spec_pb2.TrainSpec, trainer_pb2.SubmitTrainRequest),
    "quantizer": (quantizer_pb2_grpc.QuantizerServiceStub, "SubmitQuantize", quantize_spec_pb2.QuantizeSpec,
                  quantizer_pb2.SubmitQuantizeRequest),
    "evaluator": (evaluator_pb2_grpc.EvaluatorServiceStub, "SubmitEvaluate", evaluate_spec_pb2.EvaluateSpec,
                  evaluator_pb2.SubmitEvaluateRequest),
}
_CODES = {grpc.StatusCode.INVALID_ARGUMENT: ValidationError, grpc.StatusCode.NOT_FOUND: NotFoundError,
          grpc.StatusCode.FAILED_PRECONDITION: PreconditionError}


def proto_json(value: Any) -> Any:
    """``value`` with non-finite floats spelled as proto JSON spells them ("NaN", "Infinity",
    "-Infinity"; json_format refuses the bare floats), so ``--learning-rate nan`` reaches the
    door, which reports it with every other problem."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: proto_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [proto_json(v) for v in value]
    return value


def parse_error_text(exc: json_format.ParseError, message_cls) -> str:
    """A proto JSON parse error in the spec's own words: an unknown key named with the fields
    of its message as written in YAML and the CLI (snake_case), not json_format's camelCase."""
    text = str(exc)
    m = re.search(r'has no field named "([^"]+)" at "([^"]+)"', text)
    if not m:
        return text.split("\n")[0]
    desc, path = message_cls.DESCRIPTOR, m.group(2).split(".")[1:]
    for part in path:
        field = desc.fields_by_name.get(part)
        if field is None or field.message_type is None:
            return text.split("\n")[0]
        desc = field.message_type
    where = ".".join(path + [m.group(1)])
    return f"{where}: unknown key (known{' in ' + '.'.join(path) if path else ''}: " \
           f"{', '.join(f.name for f in desc.fields)})"


def state_name(state: int) -> str:
    return jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_")


def _problems(exc: grpc.RpcError) -> list[str] | None:
    """The problems of an INVALID_ARGUMENT, one each, from its ``google.rpc.BadRequest`` detail
    (services/common/rpc/server.py), or None when the server sent none."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # a status detail that does not match the call's own status
        return None
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return [v.description for v in bad.field_violations] or None
    return None


def _retry_s(exc: grpc.RpcError) -> float:
    """The server's retry hint (``google.rpc.RetryInfo``), 1 s when it sent none."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
    try:
        status = rpc_status.from_call(exc)
    except ValueError:
        status = None
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToMilliseconds() / 1000
    return 1.0


def _translate(exc: grpc.RpcError, service: str, address: str) -> FtlabError:
    code = exc.code()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Busy(f"{service} service at {address} is busy: {exc.details()}", _retry_s(exc))
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValidationError(_problems(exc) or exc.details())
    if code in _CODES:
        return _CODES[code](exc.details())
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return Unauthenticated(f"{service} service at {address} refused the call: {exc.details()}")
    if code == grpc.StatusCode.UNAVAILABLE:
        if "storage" in (exc.details() or "").lower() or "S3" in (exc.details() or ""):
            return StorageError(exc.details())
        return ServiceUnavailable(f"{service} service at {address} is unavailable: {exc.details()}")
    return FtlabError(f"{service} service: {code.name}: {exc.details()}")


def secure_channel(address: str, token: str | None = _FROM_ENV,
                   credentials: grpc.ChannelCredentials | None = _FROM_ENV) -> grpc.Channel:
    """A channel to ``address`` with TLS (FTLAB_TLS_CA [+ FTLAB_TLS_CLIENT_CERT/KEY]) and the bearer
    token (FTLAB_AUTH_TOKEN / FTLAB_AUTH_TOKEN_FILE) from the environment unless given; credentials
    never come from code."""
    from services.common.rpc.auth import BearerClientInterceptor, client_token
    from services.common.rpc.tls import channel_credentials
    token = client_token() if token is _FROM_ENV else token
    credentials = channel_credentials() if credentials is _FROM_ENV else credentials
    # the servers' message limit (a client reads whatever a server may send); keepalive pings while
    # a call is open, so a watch on a dead connection fails in seconds and reconnects, not hangs
    options = grpc_message_options() + CLIENT_CHANNEL_OPTIONS
    ch = (grpc.secure_channel(address, credentials, options=options) if credentials
          else grpc.insecure_channel(address, options=options))
    return grpc.intercept_channel(ch, BearerClientInterceptor(token)) if token else ch


_SLOTS: dict[str, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def _watch_slots(address: str) -> threading.BoundedSemaphore:
    with _SLOTS_LOCK:
        return _SLOTS.setdefault(address, threading.BoundedSemaphore(MAX_WATCH_STREAMS))


class ServiceClient:
    """``token`` / ``credentials``: default from the environment (see :func:`secure_channel`).
    One channel is one HTTP/2 connection carrying any number of calls at once: :func:`shared`
    gives every thread of a process the same client per service."""

    def __init__(self, service: str, address: str | None = None, timeout_s: float = 30.0,
                 token: str | None = _FROM_ENV, credentials: grpc.ChannelCredentials | None = _FROM_ENV):
        if service not in _SERVICES:
            raise ValidationError(f"unknown service {service!r}; known: {', '.join(_SERVICES)}")
        self.service, self.address, self.timeout_s = service, address or service_address(service), timeout_s
        self.channel = secure_channel(self.address, token, credentials)
        stub_cls, self._submit_rpc, self.spec_cls, self._request_cls = _SERVICES[service]
        self.stub = stub_cls(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, rpc: str, request, **kw):
        """One unary call; a busy server (RESOURCE_EXHAUSTED) is asked again after its retry hint
        (with jitter) until the call's timeout is spent."""
        timeout = kw.pop("timeout", self.timeout_s)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return getattr(self.stub, rpc)(request, timeout=max(0.1, deadline - time.monotonic()), **kw)
            except grpc.RpcError as exc:
                err = _translate(exc, self.service, self.address)
            if not isinstance(err, Busy) or time.monotonic() + err.retry_s > deadline:
                raise err from None
            time.sleep(err.retry_s * random.uniform(0.5, 1.0))

    # -- RPCs

    def submit(self, spec: dict[str, Any] | Any, request_id: str = "") -> jobs_pb2.Job:
        if isinstance(spec, dict):
            try:
                spec = json_format.ParseDict(proto_json(spec), self.spec_cls())
            except json_format.ParseError as exc:  # a field or value the message cannot hold
                raise ValidationError(f"spec: {parse_error_text(exc, self.spec_cls)}") from None
        return self._call(self._submit_rpc, self._request_cls(spec=spec, request_id=request_id))

    def get(self, job_id: str) -> jobs_pb2.Job:
        return self._call("GetJob", jobs_pb2.GetJobRequest(job_id=job_id))

    def list(self, states=(), page_size: int = 50, page_token: str = "") -> jobs_pb2.ListJobsResponse:
        return self._call("ListJobs", jobs_pb2.ListJobsRequest(states=list(states), page_size=page_size,
                                                               page_token=page_token))

    def list_all(self, states=()) -> list[jobs_pb2.Job]:
        jobs, token = [], ""
        while True:
            page = self.list(states, 200, token)
            jobs += page.jobs
            token = page.next_page_token
            if not token:
                return jobs

    def cancel(self, job_id: str) -> jobs_pb2.Job:
        return self._call("CancelJob", jobs_pb2.CancelJobRequest(job_id=job_id))

    def watch(self, job_id: str, after_seq: int = 0) -> Iterator[jobs_pb2.JobEvent]:
        call = self.stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id, after_seq=after_seq))
        try:
            yield from call
        except grpc.RpcError as exc:
            raise _translate(exc, self.service, self.address) from None
        finally:
            call.cancel()  # a caller that stops iterating early frees the server's stream thread now

    # -- conveniences

    def wait(self, job_id: str, timeout_s: float = 3600.0,
             on_event: Callable[[jobs_pb2.JobEvent], None] | None = None) -> jobs_pb2.Job:
        """Follow the job's events until it is terminal (reconnecting where the stream broke);
        raises TimeoutError once it has run ``timeout_s`` — time QUEUED does not count (a flow
        submits a whole sweep at once; its last job may wait hours for the device, and must not be
        cancelled for the others' run time). Returns the final job. At most
        ``MAX_WATCH_STREAMS`` waits of this process watch one service at once; the others, and
        any the server refuses as busy, poll GetJob with backoff meanwhile."""
        deadline, seq, pause, started = time.time() + timeout_s, 0, POLL_S[0], False
        slots = _watch_slots(self.address)
        while True:
            if slots.acquire(blocking=False):
                try:
                    for ev in self.watch(job_id, seq):
                        seq, pause = ev.seq, POLL_S[0]
                        if on_event:
                            on_event(ev)
                        if ev.state == jobs_pb2.JOB_STATE_QUEUED or not started:
                            started = ev.state != jobs_pb2.JOB_STATE_QUEUED
                            deadline = time.time() + timeout_s  # the clock starts when the job does
                        if time.time() > deadline:
                            break
                except (ServiceUnavailable, Busy) as exc:
                    if time.time() > deadline:
                        raise
                    time.sleep(getattr(exc, "retry_s", 1.0) * random.uniform(0.5, 1.0))
                finally:
                    slots.release()
            else:
                time.sleep(pause * random.uniform(0.8, 1.2))
                pause = min(POLL_S[1], pause * 1.5)
            job = self.get(job_id)
            if job.state in TERMINAL:
                return job
            if job.state == jobs_pb2.JOB_STATE_QUEUED:
                deadline = time.time() + timeout_s
            elif not started:  # first seen running here (polling, or a stream that broke)
                started, deadline = True, time.time() + timeout_s
            elif time.time() > deadline:
                raise TimeoutError(f"{self.service} job {job_id} still {state_name(job.state)} after {timeout_s:.0f}s")

    def run(self, spec, request_id: str | None = None, timeout_s: float = 3600.0,
            on_event=None, committed: Callable[[jobs_pb2.Job], bool] | None = None,
            on_retry: Callable[[str], None] | None = None, cancel_on_timeout: bool = False) -> jobs_pb2.Job:
        """Submit (idempotently, see :meth:`submit_fresh`), wait, and raise JobFailed unless the job
        SUCCEEDED. After ``timeout_s`` raise TimeoutError; with ``cancel_on_timeout`` the job is
        cancelled first (a flow step that gives up must not leave its job holding the device)."""
        job = self.submit_fresh(spec, request_id or uuid.uuid4().hex, committed=committed, on_retry=on_retry)
        try:
            job = self.wait(job.job_id, timeout_s, on_event)
        except TimeoutError as exc:
            if not cancel_on_timeout:
                raise
            self.cancel(job.job_id)
            raise TimeoutError(f"{exc}; cancelled it") from exc
        if job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
            raise JobFailed(job)
        return job

    def submit_fresh(self, spec, request_id: str, max_attempts: int = 100,
                     committed: Callable[[jobs_pb2.Job], bool] | None = None,
                     on_retry: Callable[[str], None] | None = None) -> jobs_pb2.Job:
        """Idempotent submit that still allows a retry: the request id returns the job already
        queued, running or succeeded; if that job FAILED or was CANCELLED — or SUCCEEDED but
        ``committed(job)`` says its output artifact is not committed now (deleted since) — the next
        attempt id (``<id>:attempt-N``) is used, so rerunning a flow redoes only what is missing.
        ``on_retry(reason)`` hears why each earlier attempt was not reused."""
        for attempt in range(1, max_attempts + 1):
            job = self.submit(spec, request_id if attempt == 1 else f"{request_id}:attempt-{attempt}")
            if job.state in (jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED):
                reason = f"job {job.job_id} ended {state_name(job.state)}: {job.error[:200]}"
            elif job.state == jobs_pb2.JOB_STATE_SUCCEEDED and committed is not None and not committed(job):
                reason = f"job {job.job_id} SUCCEEDED but its output is no longer committed (no manifest)"
            else:
                return job
            if on_retry is not None:
                on_retry(f"{reason}; re-run as attempt {attempt + 1}")
        raise PreconditionError(f"request {request_id!r} failed {max_attempts} times; use a new request id")

    def healthy(self, timeout_s: float = 2.0) -> bool:
        try:
            resp = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                  timeout=timeout_s)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.time() + timeout_s
        while not self.healthy():
            if time.time() > deadline:
                raise ServiceUnavailable(f"{self.service} service at {self.address} not healthy after {timeout_s:.0f}s")
            time.sleep(0.3)


_SHARED: dict[tuple[str, str], ServiceClient] = {}


def shared(service: str) -> ServiceClient:
    """This process's client of ``service`` at its configured address (one connection, however
    many threads use it; never closed: it lives as long as the process)."""
    key = (service, service_address(service))
    with _SLOTS_LOCK:
        if key not in _SHARED:
            _SHARED[key] = ServiceClient(service, key[1])
        return _SHARED[key]

