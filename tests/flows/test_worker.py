"""The Prefect deployment path under a real worker (issue 14, fault 7), as a team runs it:
`prefect server start` as its own process (own PREFECT_HOME, a free port), a `process` work pool
and worker (its environment as docs/FLOWS.md gives it), `prefect deploy --all` from the checkout,
then deployment runs of small experiments on the tiny model against the real services:

1. a run to COMPLETED, through `prefect deployment run ... --watch`;
2. a run cancelled with `prefect flow-run cancel`: its running and queued training jobs end CANCELLED;
3. a run whose flow process is SIGKILLed: the worker's on_crashed hook cancels its jobs.

One server, worker and set of services is shared by the three cases (module fixture)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.deployments import ZOMBIE_AFTER_S, ZOMBIE_AUTOMATION
from services.common.rpc.clients import ServiceClient, state_name
from tests.conftest import ROOT, SEED_DATA, TINY

pytestmark = pytest.mark.slow
PREFECT = str(Path(sys.executable).parent / "prefect")
LONG = {"peft_method": "lora", "lora": {"r": 4}, "max_steps": 5000, "train_limit": 8, "per_device_batch_size": 1,
        "gradient_accumulation_steps": 1, "max_seq_length": 64}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str, path: str, body: dict | None = None) -> dict:
    """One Prefect REST call. 429/502/503 are retried with backoff, as Prefect's own client does
    (PREFECT_CLIENT_MAX_RETRIES): under load its server answers 503 when SQLite is locked."""
    for attempt in range(6):
        req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"},
                                     method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code not in (429, 502, 503) or attempt == 5:
                raise
            time.sleep(2 ** attempt)


def _wait(what, check, timeout=240.0, every=0.5):
    deadline = time.time() + timeout
    while not (out := check()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    from services.common.torch_utils import modeling
    from services.common.data.importing import import_dataset
    from services.common.jobs.runtime import RuntimeOptions
    from services.common.rpc.service import RunningService, Security
    from services.common.storage.store import LocalStore
    from services.evaluator.server import SERVICE as EVALUATOR
    from services.quantizer.server import SERVICE as QUANTIZER
    from services.trainer.server import SERVICE as TRAINER
    tmp = tmp_path_factory.mktemp("worker")
    store = LocalStore(tmp / "storage")
    store.ensure_buckets()
    modeling.commit_base_model(store, TINY, tiny_model_dir, {"source": "tiny-random-qwen3", "seed": 0})
    import_dataset(store, "arc", "seed", SEED_DATA)
    running = {s.name: RunningService(s, store, "127.0.0.1:0", RuntimeOptions(cancel_grace_s=2.0), security=Security())
               for s in (TRAINER, QUANTIZER, EVALUATOR)}
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    # The worker's environment (docs/FLOWS.md): the Prefect API, where storage is, where the services are.
    env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect"), PREFECT_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5",
               FTLAB_STORAGE="local", FTLAB_LOCAL_ROOT=str(store.root), HF_HUB_OFFLINE="1",
               **{f"FTLAB_{n.upper()}_ADDR": s.address for n, s in running.items()})
    procs, logs = [], tmp / "logs"
    logs.mkdir()

    def start(name, args, cwd):
        with open(logs / f"{name}.log", "wb") as log:
            procs.append(subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT))

    def cli(*args, timeout=300):
        return subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    try:
        start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], tmp)

        def healthy():
            try:
                return _api(api, "/health") is True
            except OSError:
                return False
        _wait("the Prefect server", healthy, timeout=180)
        start("worker", [PREFECT, "worker", "start", "--pool", "ftlab-process", "--type", "process"], tmp)

        def pool():  # the worker creates its pool
            try:
                return _api(api, "/work_pools/ftlab-process")
            except OSError:
                return None
        _wait("the worker's work pool", pool, timeout=120)
        # Both routes, from the checkout (prefect.yaml used to pull into /app): each stores "run from here".
        pulls = []
        for route in ([sys.executable, "-m", "flows.deployments", "deploy"], [PREFECT, "--no-prompt", "deploy", "--all"]):
            deploy = subprocess.run(route, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            assert deploy.returncode == 0, deploy.stdout + deploy.stderr
            pulls.append(_api(api, "/deployments/name/ftlab-experiment/smoke")["pull_steps"])
        assert pulls[0] == pulls[1] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
        yield {"store": store, "running": running, "api": api, "cli": cli, "tmp": tmp, "logs": logs, "env": env}
    finally:
        for p in procs[::-1]:
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for s in running.values():
            s.stop(2.0)


def _plan(stack, name: str, train: list[dict]) -> str:
    path = stack["tmp"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base_models": [TINY], "datasets": ["arc"], "train": train}))
    return str(path)


def _start_run(stack, plan: str) -> str:
    """A flow run of the deployment (what `prefect deployment run` does), returning its id."""
    dep = _api(stack["api"], "/deployments/name/ftlab-experiment/smoke")
    run = _api(stack["api"], f"/deployments/{dep['id']}/create_flow_run",
               {"parameters": {"experiment": plan, "report_dir": str(stack["tmp"] / "reports")}})
    return run["id"]


def _jobs(stack, experiment: str) -> list:
    with ServiceClient("trainer", stack["running"]["trainer"].address) as c:
        return [j for j in c.list_all() if j.request_id.startswith(experiment + ":")]


def _ends_cancelled(stack, experiment: str) -> None:
    def all_cancelled():
        jobs = _jobs(stack, experiment)
        return jobs if all(state_name(j.state) == "CANCELLED" for j in jobs) else None
    _wait(f"{experiment}'s jobs to end CANCELLED", all_cancelled, timeout=120)


def _running_and_queued(stack, experiment: str) -> None:
    def both():
        states = sorted(state_name(j.state) for j in _jobs(stack, experiment))
        return states == ["QUEUED", "RUNNING"]
    _wait(f"{experiment}: one RUNNING and one QUEUED training job", both)


def test_deployment_run_completes_under_the_worker(stack):
    plan = _plan(stack, "wdone", [{**LONG, "max_steps": 1, "lora": {"r": 2}}])  # each case its own model names
    out = stack["cli"]("deployment", "run", "ftlab-experiment/smoke", "--watch", "--watch-timeout", "600",
                       "-p", f"experiment={plan}", "-p", f"report_dir={stack['tmp'] / 'reports'}", timeout=660)
    assert out.returncode == 0 and "Completed" in out.stdout, out.stdout + out.stderr
    assert [state_name(j.state) for j in _jobs(stack, "wdone")] == ["SUCCEEDED"]


def test_cancelling_a_deployment_run_cancels_its_service_jobs(stack):
    run_id = _start_run(stack, _plan(stack, "wcancel", [{**LONG, "lora": {"r": 3}}, {**LONG, "lora": {"r": 5}}]))
    _running_and_queued(stack, "wcancel")
    out = stack["cli"]("flow-run", "cancel", run_id)
    assert out.returncode == 0, out.stdout + out.stderr
    _ends_cancelled(stack, "wcancel")
    _wait("the flow run to end CANCELLED",
          lambda: _api(stack["api"], f"/flow_runs/{run_id}")["state"]["type"] == "CANCELLED", timeout=120)


def _flow_process(run_id: str) -> int | None:
    """The pid of the worker's flow-run process (its environment names the flow run)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if f"PREFECT__FLOW_RUN_ID={run_id}".encode() in environ.split(b"\0"):
            return int(pid)
    return None


def test_a_killed_flow_process_has_its_jobs_cancelled_by_the_crash_hook(stack):
    run_id = _start_run(stack, _plan(stack, "wcrash", [{**LONG, "lora": {"r": 6}}, {**LONG, "lora": {"r": 7}}]))
    _running_and_queued(stack, "wcrash")
    os.kill(_wait("the flow process", lambda: _flow_process(run_id)), signal.SIGKILL)  # no handler runs
    _ends_cancelled(stack, "wcrash")
    assert _api(stack["api"], f"/flow_runs/{run_id}")["state"]["type"] == "CRASHED"
    worker_log = (stack["logs"] / "worker.log").read_text()
    assert "unexpected keyword argument" not in worker_log, worker_log[-3000:]


def test_deploying_leaves_one_zombie_automation_that_crashes_silent_runs(stack):
    """What a worker restart relies on (a flow run whose process died is Crashed, not Running
    forever): the automation `python -m flows.deployments deploy` registered, once however often it
    runs, proactive on the flow runs' heartbeats. Its long form, a worker and its flow-run process
    killed mid-run and the run ending Crashed, is tests/flows/test_worker_restart.py
    (`make check-worker-restart`)."""
    again = subprocess.run([sys.executable, "-c", "from flows.deployments import ensure_zombie_automation as e; e()"],
                           cwd=ROOT, env=stack["env"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    found = [a for a in _api(stack["api"], "/automations/filter", {}) if a["name"] == ZOMBIE_AUTOMATION]
    assert len(found) == 1 and found[0]["enabled"], found
    trigger, actions = found[0]["trigger"], found[0]["actions"]
    assert trigger["posture"] == "Proactive" and trigger["within"] == ZOMBIE_AFTER_S, trigger
    assert trigger["match"] == {"prefect.resource.id": "prefect.flow-run.*"}, trigger
    assert set(trigger["after"]) == {"prefect.flow-run.heartbeat"} and trigger["for_each"] == ["prefect.resource.id"]
    ends = {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Crashed"}
    assert ends <= set(trigger["expect"]), trigger
    assert [(a["type"], a["state"]) for a in actions] == [("change-flow-run-state", "CRASHED")], actions
