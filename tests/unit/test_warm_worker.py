"""The warm job runtime (services/common/warm_worker.py): job children fork from a fork server
that preloaded the recipe modules, yet see the service's environment and working directory as
they are at submit, like spawned children did. Cancel, SIGKILL and restart behaviour is
tests/unit/test_runtime.py's, which runs on this same runtime."""
from __future__ import annotations

import os
import time

import pytest

from services.common import warm_worker
from services.common.job_record import JobState
from services.common.job_runtime import JobRuntime, RuntimeOptions


def _run(rt, cfg):
    rec = rt.submit("report_env", cfg, lambda: cfg)
    deadline = time.time() + 60
    while not rt.get(rec.job_id).state.is_terminal():
        assert time.time() < deadline, "job did not finish"
        time.sleep(0.05)
    final = rt.get(rec.job_id)
    assert final.state is JobState.SUCCEEDED, final.error
    return final.outputs


def test_children_fork_from_the_warm_server_and_see_the_current_environment(store, monkeypatch, tmp_path):
    monkeypatch.setenv("FTLAB_WORKER", "forkserver")  # opt-in (spawn is the default)
    rt = JobRuntime("warmsvc", store, {"report_env": "tests.recipes:report_env"}, RuntimeOptions())
    rt.start()
    try:
        monkeypatch.setenv("FTLAB_TEST_WARM", "first")
        out = _run(rt, {"var": "FTLAB_TEST_WARM"})
        assert out["env"] == "first" and out["service"] == "warmsvc"
        assert out["ppid"] != str(os.getpid())  # the fork server's child, not the service's
        monkeypatch.setenv("FTLAB_TEST_WARM", "second")  # changed after the server started
        monkeypatch.chdir(tmp_path)
        out = _run(rt, {"var": "FTLAB_TEST_WARM"})
        assert out["env"] == "second" and out["cwd"] == str(tmp_path)
    finally:
        rt.shutdown(1.0)


def test_spawn_stays_available(monkeypatch):
    monkeypatch.setenv("FTLAB_WORKER", "spawn")
    assert warm_worker.context(["tests.recipes:report_env"]).get_start_method() == "spawn"
    monkeypatch.setenv("FTLAB_WORKER", "threads")
    with pytest.raises(ValueError, match="forkserver"):
        warm_worker.mode()


def test_gpu_hosts_preload_only_torch(monkeypatch):
    """bitsandbytes initialises CUDA at import and a CUDA context cannot cross a fork."""
    monkeypatch.setenv("FTLAB_DEVICE", "cuda")
    assert warm_worker._cuda_possible()
    monkeypatch.setenv("FTLAB_DEVICE", "cpu")
    assert not warm_worker._cuda_possible()
