"""Throughput of the job API under concurrent clients: SubmitQuantize (idempotent, with request
ids), GetJob, ListJobs and WatchJob replay, against one real service on loopback gRPC over a local
store. The recipe is torch-free (tests/hardening.py), so this measures the API and the runtime,
not a model. Run: ``.venv/bin/python -m bench.bench_load [--jobs 200 --threads 10]``."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("FTLAB_LOG_LEVEL", "WARNING")


def _rate(n: int, fn, threads: int) -> tuple[float, float]:
    """(calls per second, p50 latency ms) of ``fn(i)`` for i in range(n) from ``threads`` threads."""
    lat: list[float] = []

    def one(i):
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    lat.sort()
    return n / wall, 1000 * lat[len(lat) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200, help="distinct jobs submitted")
    ap.add_argument("--threads", type=int, default=10, help="client threads")
    ap.add_argument("--auth", action="store_true", help="with a bearer token (auth interceptor on)")
    args = ap.parse_args()

    from services.common.clients import ServiceClient
    from services.common.job_runtime import RuntimeOptions
    from services.common.service_main import RunningService, Security
    from services.common.settings import configure_logging
    from services.common.storage import LocalStore
    from tests.hardening import CTL_ENV, make_source, service_def, spec
    configure_logging()

    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    (tmp / "ctl").mkdir()
    os.environ[CTL_ENV] = str(tmp / "ctl")
    (tmp / "ctl" / "hold").write_text("yes")  # jobs wait: the queue, not the children, is measured
    store = LocalStore(tmp / "storage")
    store.ensure_buckets()
    make_source(store)
    token = "b" * 32 if args.auth else None
    svc = RunningService(service_def(), store, "127.0.0.1:0", RuntimeOptions(max_running=1, cancel_grace_s=1.0),
                         security=Security(tokens=(token,) if token else ()))
    clients = [ServiceClient("quantizer", svc.address, token=token, credentials=None) for _ in range(args.threads)]
    ids: list[str] = [""] * args.jobs

    def submit(i):
        ids[i] = clients[i % args.threads].submit(spec(i), f"bench-{i}").job_id
    try:
        results = {}
        results["submit (new job)"] = _rate(args.jobs, submit, args.threads)
        results["submit (repeated request id)"] = _rate(
            args.jobs, lambda i: clients[i % args.threads].submit(spec(i), f"bench-{i}"), args.threads)
        results["get"] = _rate(args.jobs * 5, lambda i: clients[i % args.threads].get(ids[i % args.jobs]),
                               args.threads)
        results["list (page of 50)"] = _rate(200, lambda i: clients[i % args.threads].list(page_size=50),
                                             args.threads)
        results["watch (replay, queued job)"] = _rate(
            200, lambda i: next(iter(clients[i % args.threads].watch(ids[i % args.jobs]))), args.threads)
    finally:
        (tmp / "ctl" / "go").touch()
        for c in clients:
            c.close()
        svc.stop(1.0)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"# {args.jobs} jobs, {args.threads} client threads, auth {'on' if args.auth else 'off'}; "
          f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("| call | calls/s | p50 latency (ms) |\n|---|---:|---:|")
    for name, (rate, p50) in results.items():
        print(f"| {name} | {rate:.0f} | {p50:.1f} |")
    print(json.dumps({k: {"per_s": round(r, 1), "p50_ms": round(p, 2)} for k, (r, p) in results.items()}))


if __name__ == "__main__":
    main()
