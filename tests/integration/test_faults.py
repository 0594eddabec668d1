"""Faults survived, with real processes: a service SIGKILLed mid-job, the S3 server stopped and restarted during an upload, and storage gone past the retry deadline.
(A job child killed like the OOM killer does is tests/unit/test_runtime.py's
test_child_killed_fails_the_job_with_the_exit_reason_and_service_keeps_serving.)"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from services.common.storage import artifacts
from services.common.rpc.clients import ServiceClient, state_name
from services.common.jobs.record import JobRecord, JobState
from services.common.jobs.runtime import RuntimeOptions
from services.common.storage.s3 import S3Store
from services.common.rpc.service import RunningService, Security
from services.common.storage.store import LocalStore
from tests.hardening import CTL_ENV, ServiceProcess, make_source, service_def, spec
from tests.s3_server import TEST_ACCESS_KEY, TEST_SECRET_KEY, MotoServer, TcpRelay, free_port


def _until(cond, timeout_s=60, what="condition"):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _runs(ctl: Path, job_id: str) -> list[str]:
    return sorted(p.name for p in ctl.glob(f"run-{job_id}-*"))


@pytest.fixture
def ctl(tmp_path, monkeypatch):
    d = tmp_path / "ctl"
    d.mkdir()
    monkeypatch.setenv(CTL_ENV, str(d))  # in-process services' children inherit it
    return d


def test_sigkilled_service_restarts_and_reruns_the_interrupted_job_from_the_start(tmp_path, ctl):
    root = tmp_path / "storage"
    store = LocalStore(root)
    store.ensure_buckets()
    make_source(store)
    (ctl / "steps").write_text("400")
    (ctl / "sleep").write_text("0.02")
    port = free_port()
    svc = ServiceProcess(root, port, ctl).start()
    try:
        with ServiceClient("quantizer", svc.address, token=None, credentials=None) as c:
            job = c.submit(spec(1), "kill-1")
            _until(lambda: c.get(job.job_id).progress_step >= 3, what="progress")
            svc.kill()  # SIGKILL: no shutdown code runs; the job's child dies with it (PDEATHSIG)
            (ctl / "steps").write_text("3")  # the re-run finishes quickly
            svc.start()
            final = c.wait(job.job_id, 60)
        assert state_name(final.state) == "SUCCEEDED", final.error
        assert [r.split("-")[-2] for r in _runs(ctl, job.job_id)] == ["1", "2"]  # ran twice, no more
        rec = JobRecord.from_json(store.get_bytes("jobs", f"quantizer/{job.job_id}.json"))
        messages = [e["message"] for e in rec.events]
        assert any("re-queued" in m and "from the start" in m for m in messages), messages
        assert "attempt 2: quantizing src-model from the start" in messages and rec.attempts == 2
        assert artifacts.read_manifest(store, "models", "out-1")["parents"] == ["src-model"]
    finally:
        svc.stop()


@pytest.fixture
def s3_outage(tmp_path):
    """Its own moto server (stopping the session's one would disturb other tests) behind a relay."""
    with MotoServer() as moto:
        relay = TcpRelay(moto.port)
        yield moto, relay
        relay.close()


def _s3(endpoint: str, retry_s: float) -> S3Store:
    store = S3Store(endpoint, TEST_ACCESS_KEY, TEST_SECRET_KEY, region="us-east-1", retries=0,
                    timeout_s=5, retry_deadline_s=retry_s)
    store.ensure_buckets()
    return store


def test_s3_server_stopped_and_restarted_during_an_upload_the_job_still_finishes(s3_outage, ctl):
    moto, relay = s3_outage
    store = _s3(relay.endpoint, retry_s=60)
    make_source(store)
    (ctl / "hold").write_text("yes")
    svc = RunningService(service_def(), store, "127.0.0.1:0", RuntimeOptions(cancel_grace_s=1.0),
                         security=Security())
    try:
        with ServiceClient("quantizer", svc.address, token=None, credentials=None) as c:
            job = c.submit(spec("s3"), "outage-1")
            _until(lambda: c.get(job.job_id).progress_step == 3, what="the job waiting to upload")
            relay.block()
            moto.stop()  # the S3 server process is gone
            (ctl / "go").touch()  # the upload starts into the outage and retries
            _until(lambda: relay.refused >= 2, 30, "the upload retrying")
            assert state_name(c.get(job.job_id).state) == "RUNNING"  # the service itself still answers
            moto.start()
            _s3(moto.endpoint, 0).ensure_buckets()  # moto restarts empty; MinIO would keep its disk
            relay.unblock()
            final = c.wait(job.job_id, 60)
        assert state_name(final.state) == "SUCCEEDED", final.error
        manifest = artifacts.read_manifest(store, "models", "out-s3")
        assert [f["path"] for f in manifest["files"]] == ["part-0.bin", "part-1.bin", "part-2.bin"]
        assert all(store.exists("models", f"out-s3/{f['path']}") for f in manifest["files"])
        # the job record reached storage too, once it was back (written by the runtime's writer)
        _until(lambda: store.exists("jobs", f"quantizer/{job.job_id}.json") and json.loads(
            store.get_bytes("jobs", f"quantizer/{job.job_id}.json"))["state"] == "SUCCEEDED", 15, "record")
    finally:
        relay.unblock()
        svc.stop(1.0)


def test_storage_down_past_the_deadline_fails_the_job_clearly_and_leaves_no_artifact(s3_outage, ctl):
    moto, relay = s3_outage
    store = _s3(relay.endpoint, retry_s=3)
    make_source(store)
    (ctl / "hold_upload").write_text("yes")
    svc = RunningService(service_def(), store, "127.0.0.1:0", RuntimeOptions(cancel_grace_s=1.0),
                         security=Security())
    try:
        with ServiceClient("quantizer", svc.address, token=None, credentials=None) as c:
            job = c.submit(spec("late"), "outage-2")
            _until(lambda: (ctl / "uploaded-1").exists(), what="the first file uploaded")
            relay.block()
            (ctl / "go_upload").touch()
            final = c.wait(job.job_id, 60)
            assert state_name(final.state) == "FAILED"
            assert "StorageUnavailable" in final.error and "FTLAB_STORAGE_RETRY_S=3" in final.error, final.error
            assert "put_file" in final.error
            relay.unblock()
            assert state_name(c.submit(spec("after"), "outage-3").state) in ("QUEUED", "RUNNING")  # still serving
        assert store.exists("models", "out-late/part-0.bin")  # really half-uploaded...
        assert artifacts.read_manifest(store, "models", "out-late") is None  # ...but not visible
        assert "out-late" not in artifacts.list_committed(store, "models")
    finally:
        relay.unblock()
        (ctl / "go_upload").touch()
        svc.stop(1.0)
