"""Placement of a Phase-1-shaped sweep by Ray (FTLAB_PLACEMENT=ray): 16 single-GPU jobs through a
real JobRuntime on a local Ray cluster with declared GPUs, laid out as one 8-GPU host and as two
4-GPU nodes. The jobs are tests.recipes:placed (torch-free, each sleeps --sleep seconds and records
its GPUs and start/end), so what is measured is the placement, not a model.

Reported per layout: the peak number of jobs running at once; the GPU-idle share while work was
queued (GPU-seconds with no job's process running while some submitted job had not started, over
all GPU-seconds of that span; goal 0); Ray's latency per job from the moment it could start (it was
submitted, and for the jobs beyond the first wave a GPU had been freed) to its process running
(p50 / max; the part of it until Ray's task had started the job's process; and p50 of its three
parts: Ray running the job's task on a worker once a GPU was free, the task starting the job's
process, that process importing the recipe until it runs); the wall time against the ideal (waves
x sleep); the service's warm-up (its Ray workers started on every node before it places jobs: the
runtime is started and warm before the sweep is submitted, as a service is up before work arrives);
and the memory of every process of the local Ray (head + nodes + workers + jobs) idle and at peak.

Run: ``PYTHONPATH=$PWD .venv/bin/python -m bench.bench_placement [--jobs 16 --sleep 5]``."""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import tempfile
import threading
import time

os.environ.setdefault("FTLAB_LOG_LEVEL", "WARNING")
LAYOUTS = {"one 8-GPU host": [8], "two 4-GPU nodes": [4, 4]}


def _tree_rss_mb() -> float:
    import psutil
    total = 0
    for p in psutil.Process().children(recursive=True):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def run_layout(gpus_per_node: list[int], jobs: int, sleep: float) -> dict:
    import ray
    from ray.cluster_utils import Cluster
    from services.common.jobs.record import JobState
    from services.common.jobs.runtime import JobRuntime, RuntimeOptions
    from services.common.storage.store import LocalStore

    tmp = tempfile.mkdtemp(prefix="bench-placement-")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    for g in gpus_per_node:
        c.add_node(num_cpus=16, num_gpus=g, resources={"ftlab-env-bench": 1000})
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="ftlab", log_to_driver=False)
    os.environ.update(FTLAB_PLACEMENT="ray", FTLAB_RAY_ADDRESS=c.address)
    rt = None
    try:
        time.sleep(2)
        idle_mb = _tree_rss_mb()
        peak = [idle_mb]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.5):
                peak[0] = max(peak[0], _tree_rss_mb())
        threading.Thread(target=sample, daemon=True).start()
        store = LocalStore(os.path.join(tmp, "store"))
        rt = JobRuntime("bench", store, {"placed": "tests.recipes:placed"}, RuntimeOptions())
        infos: dict[str, dict] = {}  # what each job's actor said when it started the job's process
        on_placed = rt._on_placed
        rt._on_placed = lambda job_id, msg: (infos.__setitem__(job_id, msg["info"]), on_placed(job_id, msg))
        t_warm = time.time()
        rt.start()
        rt._warm.wait(180)
        warm_s = time.time() - t_warm
        warm_mb = _tree_rss_mb()  # with the service's warm workers
        log_dir = os.path.join(tmp, "runs")
        os.makedirs(log_dir)
        cfg = {"log_dir": log_dir, "sleep": sleep}
        t0 = time.time()
        submitted = {}
        for _ in range(jobs):
            job = rt.submit("placed", cfg, lambda: cfg).job_id
            submitted[job] = time.time()
        for job in submitted:
            while rt.get(job).state is not JobState.SUCCEEDED:
                if rt.get(job).state.is_terminal():
                    raise SystemExit(f"job {job} ended {rt.get(job).state.value}: {rt.get(job).error}")
                time.sleep(0.1)
        wall = time.time() - t0
        stop.set()
        placed = {j: next(e["time"] for e in rt.get(j).events if e["type"] == "STATE" and e["state"] == "RUNNING")
                  for j in submitted}
    finally:
        if rt is not None:
            rt.shutdown(2.0)
        ray.shutdown()
        c.shutdown()
        os.environ.pop("FTLAB_PLACEMENT", None)
        os.environ.pop("FTLAB_RAY_ADDRESS", None)
    runs = []
    for path in glob.glob(os.path.join(log_dir, "*.start")):
        info = json.load(open(path))
        info["end"] = json.load(open(path[:-6] + ".end"))["end"]
        info["submit"], info["placed"] = submitted[info["job"]], placed[info["job"]]
        info["task_up"], info["process_started"] = infos[info["job"]]["task_up"], infos[info["job"]]["process_started"]
        runs.append(info)
    shutil.rmtree(tmp, ignore_errors=True)
    return summarize(runs, sum(gpus_per_node), wall, sleep) | {"warm_up_s": round(warm_s, 1), "ray_idle_mb": round(idle_mb), "ray_warm_mb": round(warm_mb),
                                                                "ray_peak_mb": round(peak[0])}


def summarize(runs: list[dict], gpus: int, wall: float, sleep: float) -> dict:
    points = sorted({r[k] for r in runs for k in ("submit", "start", "end")})
    running_peak, idle, span = 0, 0.0, 0.0
    for a, b in zip(points, points[1:]):
        mid = (a + b) / 2
        running = sum(r["start"] <= mid < r["end"] for r in runs)
        waiting = sum(r["submit"] <= mid < r["start"] for r in runs)
        running_peak = max(running_peak, running)
        if waiting:
            span += gpus * (b - a)
            idle += (gpus - running) * (b - a)
    starts = sorted(runs, key=lambda r: r["start"])
    ends = sorted(r["end"] for r in runs)
    latency, ray_part = [], []  # from when the job could start (submitted, and a GPU free) to its process running
    worker, fork, imports = [], [], []  # its parts: Ray runs the job's task on a worker; the task starts the
    for i, r in enumerate(starts):      # job's process; that process imports the recipe and begins
        could = r["submit"] if i < gpus else max(r["submit"], ends[i - gpus])
        latency.append(r["start"] - could)
        ray_part.append(max(0.0, r["placed"] - could))  # Ray's share: until its task had started the child
        worker.append(max(0.0, r["task_up"] - could))
        fork.append(r["process_started"] - r["task_up"])
        imports.append(r["start"] - r["process_started"])
    for xs in (latency, ray_part, worker, fork, imports):
        xs.sort()
    waves = -(-len(runs) // gpus)
    return {"jobs": len(runs), "gpus": gpus, "peak_running": running_peak,
            "gpu_idle_share_while_queued": round(idle / span, 3) if span else 0.0,
            "latency_p50_s": round(latency[len(latency) // 2], 2), "latency_max_s": round(latency[-1], 2),
            "ray_part_p50_s": round(ray_part[len(ray_part) // 2], 2),
            "parts_p50_s": {"ray_runs_task": round(worker[len(worker) // 2], 2),
                            "task_starts_process": round(fork[len(fork) // 2], 2),
                            "process_imports": round(imports[len(imports) // 2], 2)},
            "wall_s": round(wall, 1), "ideal_s": waves * sleep}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--sleep", type=float, default=5.0, help="seconds each job runs")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), declared GPUs only")
    for name, layout in LAYOUTS.items():
        out = run_layout(layout, args.jobs, args.sleep)
        print(json.dumps({"layout": name} | out))


if __name__ == "__main__":
    main()
