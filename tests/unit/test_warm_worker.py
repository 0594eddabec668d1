"""The warm job runtime (services/common/jobs/fork_server.py): job children fork from a fork server
that preloaded the recipe modules, yet see the service's environment and working directory as
they are at submit, like spawned children did. Cancel, SIGKILL and restart behaviour is
tests/unit/test_runtime.py's, which runs on this same runtime."""
from __future__ import annotations

import os
import time

import pytest

from services.common.jobs import fork_server as warm_worker
from services.common.jobs.record import JobState
from services.common.jobs.runtime import JobRuntime, RuntimeOptions


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
    monkeypatch.setenv("FTLAB_WORKER", "forkserver")  # the default, set in case the caller's env says spawn
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


def _gone(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie runs nothing; its reaper may just be slow


@pytest.mark.parametrize("worker", ["forkserver", "spawn"])
def test_a_job_dies_with_its_sigkilled_service(worker, tmp_path):
    """A SIGKILLed service leaves no job running (and committing) behind its back, whichever way
    its jobs start: under forkserver a job's parent is the fork server, not the service."""
    import signal
    import subprocess
    import sys
    code = ("import time; from services.common.jobs.runtime import JobRuntime; "
            "from services.common.storage.store import LocalStore; "
            f"rt = JobRuntime('svc', LocalStore({str(tmp_path / 's')!r}), "
            "{'r': 'tests.recipes:record_pid_then_sleep'}); rt.start(); "
            f"cfg = {{'pid_dir': {str(tmp_path)!r}}}; rt.submit('r', cfg, lambda: cfg); time.sleep(600)")
    env = {**os.environ, "FTLAB_WORKER": worker, "TMPDIR": str(tmp_path)}
    service = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "pid").exists():
            assert service.poll() is None and time.time() < deadline, "the job never started"
            time.sleep(0.05)
        time.sleep(0.2)  # the pid file is written; let the recipe reach its sleep
        job = int((tmp_path / "pid").read_text())
        assert not _gone(job)
    finally:
        service.kill()
        service.wait(10)
    deadline = time.time() + 15
    while not _gone(job):
        assert time.time() < deadline, f"job {job} outlived its SIGKILLed service ({worker})"
        time.sleep(0.05)


def test_the_fork_server_imports_the_services_warm_imports_once(tmp_path):
    """A job forked from the warm server finds the service's ``warm_imports`` already imported
    (its own process, so this process's fork server, started by earlier tests, does not count)."""
    import json
    import subprocess
    import sys
    code = ("import json, time; from services.common.jobs.runtime import JobRuntime; "
            "from services.common.storage.store import LocalStore; "
            f"rt = JobRuntime('svc', LocalStore({str(tmp_path / 's')!r}), "
            "{'r': 'tests.recipes:report_modules'}, warm_imports=('email.mime.text',)); rt.start(); "
            "cfg = {'modules': ['email.mime.text', 'xml.dom.minidom']}; job = rt.submit('r', cfg, lambda: cfg).job_id\n"
            "while not rt.get(job).state.is_terminal(): time.sleep(0.05)\n"
            "print(json.dumps(rt.get(job).outputs)); rt.shutdown(1.0)")
    env = {**os.environ, "FTLAB_WORKER": "forkserver", "FTLAB_DEVICE": "cpu", "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"email.mime.text": "True", "xml.dom.minidom": "False"}


def test_spawn_stays_available(monkeypatch):
    monkeypatch.setenv("FTLAB_WORKER", "spawn")
    assert warm_worker.context(["tests.recipes:report_env"]).get_start_method() == "spawn"
    monkeypatch.setenv("FTLAB_WORKER", "threads")
    with pytest.raises(ValueError, match="forkserver"):
        warm_worker.mode()


def test_gpu_hosts_preload_only_torch(monkeypatch):
    """bitsandbytes initialises CUDA at import and a CUDA context cannot cross a fork: the fork
    server asks the one GPU probe (services/common/hardware/devices.py) whether this host runs on a GPU."""
    import inspect

    from services.common.hardware import devices
    monkeypatch.setenv("FTLAB_DEVICE", "cuda")
    assert devices.has_gpu()
    monkeypatch.setenv("FTLAB_DEVICE", "cpu")
    assert not devices.has_gpu()
    assert "devices.has_gpu()" in inspect.getsource(warm_worker.context)