"""A worker restart during a flow run (issue 22's fault, the cheapest level that shows it): a real
`prefect server start`, a real process worker, a flow run in progress, then the worker and its
flow-run process killed (what `docker compose restart prefect-worker` does to them) and a new
worker started. Before the fix the flow run stayed Running forever; now the automation that
``python -m flows.deployments deploy`` registers sets it Crashed once its heartbeats stop.

The flow is a sleeper, not an experiment: what is under test is Prefect's bookkeeping of a run
whose process is gone, and the rerun's skipping of committed steps is covered by the flow tests.

A long form (`make check-worker-restart`, never part of `make test`: ~100 s, most of it the
automation's window): the suite keeps its fast part, the automation's registration checked against
tests/flows/test_worker.py's server (test_deploying_leaves_one_zombie_automation_...)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.deployments import ZOMBIE_AUTOMATION
from tests.conftest import ROOT
from tests.flows.test_worker import _api, _flow_process, _free_port, _wait

pytestmark = [pytest.mark.slow, pytest.mark.long]
PREFECT = str(Path(sys.executable).parent / "prefect")

AFTER_S = 45  # the automation's window in this test: 1.5 heartbeats of 30 s
SLEEPER = '''
import time
from prefect import flow

@flow
def sleeper(seconds: int = 900):
    time.sleep(seconds)
'''


def test_a_flow_run_whose_worker_restarted_ends_crashed(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5",
               # the compose worker's setting (docker-compose.gpu.yml): Prefect's minimum
               PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30")
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    procs = []

    def start(name, args):
        log = open(tmp_path / f"{name}.log", "wb")
        procs.append(subprocess.Popen(args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        return procs[-1]

    def worker():
        return start(f"worker{len(procs)}", [PREFECT, "worker", "start", "--pool", "ftlab-process", "--type", "process"])
    try:
        start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)])

        def healthy():
            try:
                return _api(api, "/health") is True
            except OSError:
                return False
        _wait("the Prefect server", healthy, timeout=180)
        first = worker()
        _wait("the worker's pool", lambda: _pool(api), timeout=120)
        # what the compose stack runs once: the deployments and the automation
        out = subprocess.run([sys.executable, "-m", "flows.deployments", "deploy"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        # deploying twice leaves one automation; the second one with a shorter window than the
        # compose stack's 120 s (still above the 30 s heartbeat), so the test waits less
        out = subprocess.run([sys.executable, "-c",
                              f"from flows.deployments import ensure_zombie_automation as e; e(after_s={AFTER_S})"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        automations = [a for a in _api(api, "/automations/filter", {}) if a["name"] == ZOMBIE_AUTOMATION]
        assert len(automations) == 1 and automations[0]["enabled"], automations
        dep = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            from prefect import flow
            flow.from_source(source={str(tmp_path)!r}, entrypoint="sleeper.py:sleeper").deploy(
                name="sleep", work_pool_name="ftlab-process", build=False, push=False)""")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert dep.returncode == 0, dep.stdout + dep.stderr
        deployment = _api(api, "/deployments/name/sleeper/sleep")
        run_id = _api(api, f"/deployments/{deployment['id']}/create_flow_run", {})["id"]

        def state():
            return _api(api, f"/flow_runs/{run_id}")["state"]
        _wait("the flow run to be Running", lambda: state()["type"] == "RUNNING", timeout=240)
        flow_pid = _wait("the flow process", lambda: _flow_process(run_id))
        time.sleep(5)    # its first heartbeat is out
        # the container restart: every process in it is killed, no handler runs
        os.killpg(first.pid, signal.SIGKILL)
        os.kill(flow_pid, signal.SIGKILL)
        worker()
        t0 = time.monotonic()
        end = _wait("the interrupted flow run to leave Running", lambda: (s := state())["type"] != "RUNNING" and s,
                    timeout=AFTER_S + 180, every=2)
        assert end["type"] == "CRASHED", end
        assert f"no heartbeat for {AFTER_S} s" in end["message"], end
        print(f"Crashed {time.monotonic() - t0:.0f} s after the kill")
    finally:
        for p in procs[::-1]:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _pool(api: str):
    try:
        return _api(api, "/work_pools/ftlab-process")
    except OSError:
        return None
