"""A service under a flood of WatchJob streams (issue #28): hundreds of watchers on a long job must
never starve Health, GetJob and CancelJob, and a client past the server's stream limit gets a prompt
RESOURCE_EXHAUSTED with a retry hint. Real gRPC server, real child process, torch-free recipe."""
from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.rpc.clients import Busy, ServiceClient, state_name
from services.common.generated.ftlab.v1 import jobs_pb2, quantizer_pb2_grpc
from services.common.rpc.server import Load
from services.common.jobs.runtime import RuntimeOptions
from services.common.rpc.service import RunningService, Security
from tests.hardening import CTL_ENV, make_source, service_def, spec

WATCHERS = 300


@pytest.fixture
def limits() -> dict:
    """The server's :class:`Load` arguments (a test parametrizes ``limits`` to change them)."""
    return {}


@pytest.fixture
def held(limits, store, tmp_path, monkeypatch):
    """A service with one job held RUNNING (its child waits for the ``go`` file)."""
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    monkeypatch.setenv(CTL_ENV, str(ctl))
    (ctl / "hold").write_text("yes")
    make_source(store)
    svc = RunningService(service_def(), store, "127.0.0.1:0", RuntimeOptions(max_running=1, cancel_grace_s=1.0),
                         security=Security(), load=Load(**limits))
    client = ServiceClient("quantizer", svc.address, token=None, credentials=None)
    job = client.submit(spec("long"), "long")
    deadline = time.time() + 240  # the fork server imports the quantizer's modules first (slow on a busy machine)
    while state_name(client.get(job.job_id).state) != "RUNNING":
        assert time.time() < deadline
        time.sleep(0.05)
    svc.ctl = ctl
    yield svc, client, job
    (ctl / "go").touch()
    client.close()
    svc.stop(1.0)


def _streams(address: str, job_id: str, n: int, channels: int = 10):
    """``n`` open WatchJob streams on ``channels`` connections, each past its first event."""
    chans = [grpc.insecure_channel(address) for _ in range(channels)]
    stubs = [quantizer_pb2_grpc.QuantizerServiceStub(c) for c in chans]
    calls = [stubs[i % channels].WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id)) for i in range(n)]
    return chans, calls


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_hundreds_of_watchers_leave_health_reads_and_cancel_answering_within_a_second(held):
    svc, client, job = held
    chans, calls = _streams(svc.address, job.job_id, WATCHERS)
    try:
        time.sleep(1.0)  # every stream reached the server
        health = health_pb2_grpc.HealthStub(client.channel)
        slow = {}
        for name, fn in [("health", lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)),
                         ("get", lambda: client.stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.job_id), timeout=1.0)),
                         ("list", lambda: client.stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=1.0)),
                         ("cancel", lambda: client.stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.job_id),
                                                                  timeout=1.0))]:
            try:
                took = _timed(fn)
            except grpc.RpcError as exc:
                slow[name] = exc.code().name
                continue
            if took > 1.0:
                slow[name] = f"{took:.2f}s"
        assert slow == {}, f"with {WATCHERS} watchers: {slow}"
        # the cancel reached the job, and every watcher sees its end
        assert state_name(client.wait(job.job_id, 30).state) == "CANCELLED"
        ends = [list(call)[-1].state for call in calls[:: WATCHERS // 20]]
        assert ends == [jobs_pb2.JOB_STATE_CANCELLED] * len(ends)
    finally:
        for call in calls:
            call.cancel()
        for c in chans:
            c.close()


@pytest.mark.parametrize("limits", [{"max_streams": 5}])
def test_a_stream_past_the_limit_is_refused_at_once_with_a_retry_hint_and_waiting_clients_poll(held):
    svc, client, job = held
    chans, calls = _streams(svc.address, job.job_id, 5, channels=1)
    try:
        for call in calls:
            assert next(call).job_id == job.job_id  # open, each past its first event
        t = time.perf_counter()
        with pytest.raises(Busy) as refused:
            next(iter(client.watch(job.job_id)))
        assert time.perf_counter() - t < 1.0 and refused.value.retry_s == 2.0, refused.value
        assert "5 open streams" in str(refused.value)
        # a client waiting on the job honours the hint: it polls GetJob and still sees the end
        (svc.ctl / "go").touch()
        assert state_name(client.wait(job.job_id, 60).state) == "SUCCEEDED"
    finally:
        for call in calls:
            call.cancel()
        for c in chans:
            c.close()
