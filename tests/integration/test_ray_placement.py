"""Jobs placed by Ray (FTLAB_PLACEMENT=ray) on a real local multi-node Ray cluster with declared GPUs.

Ray assigns declared GPUs exactly as real ones (ids, CUDA_VISIBLE_DEVICES per actor); the jobs are
the torch-free ``tests.recipes:placed``, which records the GPUs it saw, its pid and its times."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from services.common.jobs.record import JobState  # noqa: E402
from services.common.jobs.runtime import JobRuntime, RuntimeOptions  # noqa: E402

SERVICE = "testsvc"
ENV = f"ftlab-env-{SERVICE}"
RECIPES = {k: f"tests.recipes:{k}" for k in ("placed", "record_pid_then_sleep", "killed")}


@pytest.fixture(scope="module")
def cluster():
    """A head that runs no job (no service environment) and the nodes each test adds."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    ray.init(address=c.address, namespace="ftlab", log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def nodes(cluster):
    """``add(gpus, **resources)`` adds a node running the test service's environment; all go after."""
    added = []

    def add(gpus: int, cpus: int = 8, env: str = ENV):
        node = cluster.add_node(num_cpus=cpus, num_gpus=gpus, resources={env: 1000})
        cluster.wait_for_nodes()
        added.append(node)
        return node

    yield add
    for node in added:
        if node in cluster.worker_nodes:
            cluster.remove_node(node)
    _wait_free()


def _wait_free(timeout=30):
    """Until Ray has every GPU free again (a test's jobs' actors are gone)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ray.available_resources().get("GPU", 0) == ray.cluster_resources().get("GPU", 0):
            return
        time.sleep(0.2)


@pytest.fixture
def ray_env(monkeypatch, cluster):
    monkeypatch.setenv("FTLAB_PLACEMENT", "ray")
    monkeypatch.setenv("FTLAB_RAY_ADDRESS", cluster.address)
    monkeypatch.delenv("FTLAB_DEVICE_MEMORY_GB", raising=False)
    monkeypatch.delenv("FTLAB_DEVICE", raising=False)
    return monkeypatch


@pytest.fixture
def runtime(store, ray_env):
    made = []

    def make(**opts):
        rt = JobRuntime(SERVICE, store, RECIPES, RuntimeOptions(**{"cancel_grace_s": 2.0, **opts}))
        rt.start()
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.shutdown(2.0)


def submit(rt, cfg, kind="placed"):
    return rt.submit(kind, cfg, lambda: cfg).job_id


def wait(rt, job_id, states, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rec = rt.get(job_id)
        if rec.state in states:
            return rec
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} stuck in {rt.get(job_id).state}: {rt.get(job_id).events[-3:]}")


def runs(log_dir):
    """Every attempt that started: its start record joined with its end time (None: never ended)."""
    out = []
    for path in sorted(glob.glob(os.path.join(log_dir, "*.start"))):
        with open(path) as fh:
            info = json.load(fh)
        end = path[:-len(".start")] + ".end"
        info["end"] = json.load(open(end))["end"] if os.path.exists(end) else None
        out.append(info)
    return out


def overlapping(rs):
    """The most runs that were running at one instant."""
    points = sorted([(r["start"], 1) for r in rs] + [(r["end"], -1) for r in rs], key=lambda p: (p[0], p[1]))
    peak = now = 0
    for _, d in points:
        now += d
        peak = max(peak, now)
    return peak


def test_concurrent_jobs_get_disjoint_gpus(runtime, nodes, tmp_path):
    nodes(gpus=4)
    rt = runtime()
    ids = [submit(rt, {"log_dir": str(tmp_path), "sleep": 1, "barrier": 4}) for _ in range(4)]
    recs = [wait(rt, j, {JobState.SUCCEEDED}) for j in ids]
    rs = runs(tmp_path)
    assert overlapping(rs) == 4, "the four single-GPU jobs ran at once on four GPUs"
    assert sorted(r["gpus"] for r in rs) == ["0", "1", "2", "3"], "each job saw only its own GPU"
    assert all("started by Ray on node" in " ".join(e["message"] for e in r.events) for r in recs)


def test_jobs_run_on_warm_reused_ray_workers(runtime, nodes, tmp_path):
    """A GPU freed is a GPU taken at once: the service starts its Ray workers before the first job
    (as many as the node has GPUs), and every job after runs on one of them, not on a fresh one."""
    nodes(gpus=2)
    rt = runtime()
    assert rt._warm.wait(120), "the service's warm-up ended"
    ids = [submit(rt, {"log_dir": str(tmp_path), "sleep": 0.2}) for _ in range(6)]
    for j in ids:
        wait(rt, j, {JobState.SUCCEEDED})
    workers = {r["ppid"] for r in runs(tmp_path)}  # the job's parent: the Ray worker that ran its task
    assert len(workers) <= 2, f"six jobs on two GPUs ran on {len(workers)} workers, not the two warm ones"


def test_gang_job_waits_for_all_its_gpus_on_one_node(runtime, nodes, tmp_path):
    nodes(gpus=4)
    nodes(gpus=2)   # 6 GPUs in all, but no 4 free on one node while the small job runs
    rt = runtime()
    small = [submit(rt, {"log_dir": str(tmp_path), "sleep": 4, "barrier": 3}) for _ in range(3)]
    for j in small:
        wait(rt, j, {JobState.RUNNING})
    big = submit(rt, {"log_dir": str(tmp_path), "sleep": 0.5, "world_size": 4})
    time.sleep(1.5)
    rec = rt.get(big)
    assert rec.state is JobState.QUEUED, "4 GPUs on one node are not free yet"
    assert any("waiting for Ray to place it: 4 GPU" in e["message"] for e in rec.events)
    wait(rt, big, {JobState.SUCCEEDED})
    by_job = {r["job"]: r for r in runs(tmp_path)}
    assert sorted(by_job[big]["gpus"].split(",")) == ["0", "1", "2", "3"]
    assert by_job[big]["start"] >= min(by_job[j]["end"] for j in small), "started only once GPUs were freed"


def test_jobs_queue_when_every_gpu_is_busy(runtime, nodes, tmp_path):
    nodes(gpus=2)
    rt = runtime()
    ids = [submit(rt, {"log_dir": str(tmp_path), "sleep": 4, "barrier": 2}) for _ in range(5)]
    deadline = time.time() + 30
    while sum(rt.get(j).state is JobState.RUNNING for j in ids) < 2 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    states = [rt.get(j).state for j in ids]
    assert states.count(JobState.RUNNING) == 2 and states.count(JobState.QUEUED) == 3
    # 3 GPUs on 2-GPU nodes = two nodes, and there is one: it says so, and waits for the cluster to grow
    too_big = submit(rt, {"log_dir": str(tmp_path), "sleep": 0, "world_size": 3})
    for j in ids:
        wait(rt, j, {JobState.SUCCEEDED})
    rs = runs(tmp_path)
    assert overlapping(rs) == 2 and len(rs) == 5
    rec = rt.get(too_big)
    assert rec.state is JobState.QUEUED and "it waits until nodes that can join" in rec.events[-1]["message"]
    assert "2 nodes (2+1 ranks)" in rec.events[-1]["message"]
    rt.cancel(too_big)
    wait(rt, too_big, {JobState.CANCELLED})


def test_fractional_packing_by_the_memory_estimate(runtime, nodes, tmp_path, ray_env):
    ray_env.setenv("FTLAB_DEVICE_MEMORY_GB", "40")
    nodes(gpus=1)
    rt = runtime()
    # 9 GiB of 40 -> a quarter GPU each: four share GPU 0, the fifth waits; 30 GiB -> 3/4, alone
    small = [submit(rt, {"log_dir": str(tmp_path), "sleep": 1, "barrier": 4, "memory_estimate_gb": 9})
             for _ in range(5)]
    for j in small:
        wait(rt, j, {JobState.SUCCEEDED})
    rs = runs(tmp_path)
    assert overlapping(rs) == 4 and {r["gpus"] for r in rs} == {"0"}
    os.makedirs(tmp_path / "big")
    big = [submit(rt, {"log_dir": str(tmp_path / "big"), "sleep": 1, "memory_estimate_gb": 30}) for _ in range(2)]
    for j in big:
        wait(rt, j, {JobState.SUCCEEDED})
    assert overlapping(runs(tmp_path / "big")) == 1


def test_cancel_running_and_waiting_jobs(runtime, nodes, tmp_path):
    nodes(gpus=1)
    rt = runtime()
    running = submit(rt, {"pid_dir": str(tmp_path)}, kind="record_pid_then_sleep")
    wait(rt, running, {JobState.RUNNING})
    waiting = submit(rt, {"log_dir": str(tmp_path), "sleep": 0.1})
    deadline = time.time() + 20
    while not os.path.exists(tmp_path / "pid") and time.time() < deadline:
        time.sleep(0.1)
    pid = int((tmp_path / "pid").read_text())
    # Ray has not placed it: it never starts (the runtime may record the cancel before it returns)
    assert rt.cancel(waiting).state in (JobState.QUEUED, JobState.CANCELLED)
    assert wait(rt, waiting, {JobState.CANCELLED}).error == "cancelled by request"
    rt.cancel(running)
    rec = wait(rt, running, {JobState.CANCELLED})
    assert "SIGTERM" in rec.events[-1]["message"] or "exit" in rec.events[-1]["message"]
    assert not _alive(pid)
    assert runs(tmp_path) == [], "the cancelled waiting job never ran"
    _wait_free()
    assert ray.available_resources().get("GPU") == 1, "the cancelled job's GPU is free again"


def _ppid(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().split(")")[1].split()[1])


def test_killed_job_process_and_killed_ray_worker_fail_with_the_reason(runtime, nodes, tmp_path):
    nodes(gpus=1)
    rt = runtime(max_attempts=1)
    rec = wait(rt, submit(rt, {}, kind="killed"), {JobState.FAILED})
    assert "killed by SIGKILL" in rec.error
    job = submit(rt, {"pid_dir": str(tmp_path)}, kind="record_pid_then_sleep")
    wait(rt, job, {JobState.RUNNING})
    deadline = time.time() + 20
    while not os.path.exists(tmp_path / "pid") and time.time() < deadline:
        time.sleep(0.1)
    child = int((tmp_path / "pid").read_text())
    worker = _ppid(child)  # the actor's process: the job's parent, or its fork server's parent
    if b"forkserver" in open(f"/proc/{worker}/cmdline", "rb").read():
        worker = _ppid(worker)
    os.kill(worker, signal.SIGKILL)
    rec = wait(rt, job, {JobState.FAILED})
    assert "Ray worker running the job was lost while it ran" in rec.error
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the job's process died with its Ray worker"
    # the killed actor could not remove its scratch folder: the next job on the node sweeps it
    from services.common.jobs.scratch import scratch_root
    left = glob.glob(os.path.join(scratch_root(), f"ray-{job}-*"))
    assert left, "the killed actor's folder is there until a sweep"
    wait(rt, submit(rt, {"log_dir": str(tmp_path), "sleep": 0}), {JobState.SUCCEEDED})
    assert not any(os.path.exists(f) for f in left)


def test_node_lost_mid_job_runs_again_elsewhere_never_twice(runtime, nodes, tmp_path, cluster):
    first_node, second_node = nodes(gpus=1), nodes(gpus=1)
    rt = runtime()
    job = submit(rt, {"log_dir": str(tmp_path), "sleep": 20})
    rec = wait(rt, job, {JobState.RUNNING})
    placed = next(e["message"] for e in rec.events if "started by Ray on node" in e["message"])
    doomed = next(n for n in (first_node, second_node) if n.node_id[:12] in placed)
    deadline = time.time() + 20
    while not runs(tmp_path) and time.time() < deadline:
        time.sleep(0.1)
    first = runs(tmp_path)[0]
    cluster.remove_node(doomed)
    rec = wait(rt, job, {JobState.SUCCEEDED}, timeout=120)
    assert rec.attempts == 2
    assert any("re-queued: the Ray worker running the job was lost" in e["message"] for e in rec.events), \
        [e["message"] for e in rec.events]
    attempts = runs(tmp_path)
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert attempts[0]["end"] is None and not _alive(first["pid"]), "the lost attempt never finished"
    assert attempts[1]["start"] > first["start"]


def test_service_restart_finds_its_running_jobs(store, ray_env, nodes, tmp_path, cluster):
    """A service killed with SIGKILL: its Ray job runs on; the restarted service re-attaches."""
    nodes(gpus=1)
    try:  # the dispatcher of earlier tests' services goes: the service killed below makes its own
        ray.kill(ray.get_actor(f"ftlab-dispatch.{SERVICE}", namespace="ftlab"))
    except ValueError:
        pass
    script = textwrap.dedent(f"""
        import sys, time
        from services.common.jobs.runtime import JobRuntime, RuntimeOptions
        from services.common.storage.store import LocalStore
        rt = JobRuntime({SERVICE!r}, LocalStore({str(store.root)!r}), {RECIPES!r}, RuntimeOptions())
        rt.start()
        cfg = {{"log_dir": {str(tmp_path)!r}, "sleep": 6}}
        job = rt.submit("placed", cfg, lambda: cfg).job_id
        while rt.get(job).state.value != "RUNNING":
            time.sleep(0.05)
        time.sleep(2.5)  # the running record is saved
        print(job, flush=True)
        time.sleep(600)
    """)
    service = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        job = service.stdout.readline().strip()
        assert job, "the first service did not start the job"
    finally:
        service.kill()
        service.wait()
    rt = JobRuntime(SERVICE, store, RECIPES, RuntimeOptions())
    rt.start()
    try:
        assert rt.get(job).state is JobState.RUNNING, "found running, not re-queued"
        rec = wait(rt, job, {JobState.SUCCEEDED})
        # the jobs' dispatcher was made by the killed service's Ray job: the new service's jobs run too
        after = submit(rt, {"log_dir": str(tmp_path), "sleep": 0})
        assert wait(rt, after, {JobState.SUCCEEDED}).attempts == 1
    finally:
        rt.shutdown(2.0)
    assert rec.attempts == 1 and len([r for r in runs(tmp_path) if r["job"] == job]) == 1, "ran once, to the end"
    assert rec.progress_step == 2 and any("re-attached" in e["message"] for e in rec.events)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def test_two_node_ddp_training_matches_one_process(ray_env, nodes, tmp_path, tiny_model_dir):
    """A training job larger than one node (FTLAB_RAY_RANKS_PER_NODE=1, world_size 2) runs as torchrun
    node ranks 0 and 1 on two Ray nodes (gloo on CPU): 2 x 4 rows per step against 1 x 8 rows in one
    process, 2 steps, the same loss curve up to float summation order (0.5 %)."""
    from services.common.torch_utils import modeling
    from services.common.rpc.clients import ServiceClient
    from services.common.data.importing import import_dataset
    from services.common.rpc.service import RunningService
    from services.common.storage.store import LocalStore
    from services.trainer.server import SERVICE as TRAINER
    from tests.conftest import SEED_DATA, TINY
    ray_env.setenv("FTLAB_DEVICE", "cpu")
    ray_env.setenv("FTLAB_RAY_RANKS_PER_NODE", "1")
    nodes(gpus=0, cpus=2, env="ftlab-env-trainer")
    nodes(gpus=0, cpus=2, env="ftlab-env-trainer")
    store = LocalStore(tmp_path / "store")
    store.ensure_buckets()
    modeling.commit_base_model(store, TINY, tiny_model_dir, {"source": "tiny-random-qwen3"})
    import_dataset(store, "arc", "seed", SEED_DATA)
    svc = RunningService(TRAINER, store, "127.0.0.1:0", RuntimeOptions(cancel_grace_s=2.0))
    client = ServiceClient("trainer", svc.address)
    try:
        common = {"base_model": TINY, "dataset": "arc", "gradient_accumulation_steps": 1, "save_steps": 0,
                  "train_limit": 8, "max_steps": 2, "learning_rate": 1e-2, "warmup_ratio": 0.0,
                  "lora": {"r": 4, "dropout": 0.0}, "max_seq_length": 48}
        client.run({**common, "per_device_batch_size": 8, "output_name": "one"}, "one", timeout_s=300)
        two = client.run({**common, "per_device_batch_size": 4, "world_size": 2, "output_name": "two"}, "two",
                         timeout_s=300)
        messages = " | ".join(e["message"] for e in svc.runtime.get(two.job_id).events)
        assert svc.runtime.get(two.job_id).state is JobState.SUCCEEDED, svc.runtime.get(two.job_id).error
    finally:
        client.close()
        svc.stop(grace_s=2.0)
    assert "--nnodes=2 --node_rank=0" in messages and "started node ranks 1..1" in messages, messages
    curves = [json.loads(store.get_bytes("models", f"{n}/training_metadata.json"))["loss_curve"] for n in ("one", "two")]
    assert [p["step"] for p in curves[1]] == [1, 2]
    for a, b in zip(*curves):
        assert abs(a["loss"] - b["loss"]) / a["loss"] < 5e-3, (a, b)
