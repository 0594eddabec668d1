"""Load on a real service over loopback gRPC (torch-free recipe, real child processes): concurrent
idempotent submissions, paging, many watchers on one job, and watchers that hang up."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from services.common.rpc.clients import TERMINAL, ServiceClient, state_name
from services.common.generated.ftlab.v1 import jobs_pb2, quantizer_pb2_grpc
from services.common.jobs.runtime import RuntimeOptions
from services.common.rpc.service import RunningService, Security
from tests.hardening import CTL_ENV, make_source, service_def, spec


@pytest.fixture
def svc(store, tmp_path, monkeypatch):
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    monkeypatch.setenv(CTL_ENV, str(ctl))
    (ctl / "steps").write_text("1")
    make_source(store)
    s = RunningService(service_def(), store, "127.0.0.1:0", RuntimeOptions(max_running=4, cancel_grace_s=1.0),
                       security=Security())
    s.ctl = ctl
    yield s
    s.stop(1.0)


def _client(svc):
    return ServiceClient("quantizer", svc.address, token=None, credentials=None)


def test_50_concurrent_submissions_make_exactly_the_distinct_jobs(svc):
    # 10 threads x 5 submissions: 40 carry one of 15 request ids (so most ids arrive several
    # times, from different threads at once), 10 carry none (each is its own job).
    plan = [[(f"load-{(t * 4 + k) % 15}" if k < 4 else "") for k in range(5)] for t in range(10)]

    def worker(t):
        with _client(svc) as c:
            out = []
            for k, rid in enumerate(plan[t]):
                job = c.submit(spec(rid or f"anon-{t}-{k}"), rid)
                out.append((rid, job.job_id))
            return out
    with ThreadPoolExecutor(10) as pool:
        results = [r for rs in pool.map(worker, range(10)) for r in rs]
    assert len(results) == 50
    by_rid: dict[str, set[str]] = {}
    for rid, job_id in results:
        if rid:
            by_rid.setdefault(rid, set()).add(job_id)
    assert len(by_rid) == 15 and all(len(ids) == 1 for ids in by_rid.values())  # no duplicates
    expected = {j for _, j in results}
    assert len(expected) == 25
    with _client(svc) as c:
        seen, token, pages = [], "", 0
        while True:
            page = c.list(page_size=7, page_token=token)
            seen += [j.job_id for j in page.jobs]
            pages, token = pages + 1, page.next_page_token
            if not token:
                break
        assert pages == 4 and len(seen) == len(set(seen)) and set(seen) == expected  # none lost
        finals = [c.wait(j, 120) for j in expected]
    assert all(state_name(j.state) == "SUCCEEDED" for j in finals), [j.error for j in finals]


def _settle(cond, timeout_s=10.0):
    """The server counts a stream once its coroutine runs: poll until ``cond`` holds."""
    deadline = time.time() + timeout_s
    while not cond():
        assert time.time() < deadline
        time.sleep(0.05)


def test_20_watchers_see_the_same_events_and_hung_up_watchers_free_their_streams(svc):
    (svc.ctl / "steps").write_text("30")
    (svc.ctl / "sleep").write_text("0.03")
    with _client(svc) as c:
        job = c.submit(spec("watched"), "watched")

        def watch(_):
            with _client(svc) as wc:
                return [(e.seq, e.type, e.state, e.step, e.message) for e in wc.watch(job.job_id)]
        with ThreadPoolExecutor(20) as pool:
            seqs = list(pool.map(watch, range(20)))
        assert all(s == seqs[0] for s in seqs)
        assert seqs[0][-1][2] == jobs_pb2.JOB_STATE_SUCCEEDED and len(seqs[0]) > 30
        assert [s[0] for s in seqs[0]] == list(range(1, len(seqs[0]) + 1))
        assert c.get(job.job_id).state in TERMINAL

        # watchers that hang up mid-stream: their server streams end (no leak)
        (svc.ctl / "hold").write_text("yes")
        long_job = c.submit(spec("held"), "held")
        streams = lambda: svc.server.load.streams  # noqa: E731
        baseline = streams()
        channels, calls = [], []
        for _ in range(10):
            ch = grpc.insecure_channel(svc.address)
            call = quantizer_pb2_grpc.QuantizerServiceStub(ch).WatchJob(jobs_pb2.WatchJobRequest(job_id=long_job.job_id))
            next(call)
            channels.append(ch)
            calls.append(call)
        _settle(lambda: streams() == baseline + 10)
        for call, ch in zip(calls, channels):
            call.cancel()
            ch.close()
        _settle(lambda: streams() == baseline)  # ...until the client hangs up
        (svc.ctl / "go").touch()
        assert state_name(c.wait(long_job.job_id, 60).state) == "SUCCEEDED"
    assert threading.active_count() < 200
