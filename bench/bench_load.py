"""Throughput of the job API under concurrent clients: SubmitQuantize (idempotent, with request
ids), GetJob, ListJobs and WatchJob replay, against one real service on loopback gRPC over a local
store. The recipe is torch-free (tests/hardening.py), so this measures the API and the runtime,
not a model. Run: ``.venv/bin/python -m bench.bench_load [--jobs 200 --threads 10]``.

``--flood`` (issue #28) measures a service under a phase's load instead: the service in its own
process over a store already holding ``--records`` job records (its start-up reloads them), then
``--watchers`` WatchJob streams held open, ``--submit-rate`` submits per second, and Health, GetJob
and CancelJob probes, for ``--seconds``: their p50/p99 latency and errors, and the service's memory
(RSS) and threads. The client is one asyncio process (grpc.aio), so the watchers cost it no threads.
``.venv/bin/python -m bench.bench_load --flood [--watchers 1000 --submit-rate 100 --records 10000]``"""
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


def _proc_status(pid: int) -> tuple[float, int]:
    """(RSS in MiB, threads) of process ``pid``."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return 1000 * xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _write_records(root: Path, service: str, n: int) -> None:
    """``n`` finished job records in the store, as a research store holds them (a few events each)."""
    from services.common.jobs.record import EventType, JobRecord, JobState
    from tests.hardening import spec
    folder = root / "jobs" / service
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time() - n
    for i in range(n):
        rec = JobRecord(job_id=f"quantize-old-{i:06d}", service=service, kind="quantize", spec=spec(f"old-{i}"),
                        config=spec(f"old-{i}"), request_id=f"old-{i}", created_at=t0 + i)
        rec.add_event(EventType.STATE, "QUEUED")
        rec.transition(JobState.RUNNING, "started")
        for step in range(1, 4):
            rec.add_event(EventType.PROGRESS, step=step, total=3)
        rec.transition(JobState.SUCCEEDED, "succeeded")
        (folder / f"{rec.job_id}.json").write_bytes(rec.to_json())


def flood(args) -> None:
    import asyncio
    import socket

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.common.generated.ftlab.v1 import jobs_pb2, quantizer_pb2, quantizer_pb2_grpc
    from services.common.rpc.clients import ServiceClient
    from tests.hardening import CTL_ENV, ServiceProcess, make_source, spec
    from services.common.storage.store import LocalStore
    from google.protobuf import json_format
    from services.common.generated.ftlab.v1 import quantize_spec_pb2

    tmp = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    ctl = tmp / "ctl"
    ctl.mkdir()
    (ctl / "hold").write_text("yes")  # the running job waits: its watchers stay open
    os.environ[CTL_ENV] = str(ctl)
    store = LocalStore(tmp / "storage")
    store.ensure_buckets()
    make_source(store)
    t = time.perf_counter()
    _write_records(tmp / "storage", "quantizer", args.records)
    print(f"# wrote {args.records} job records in {time.perf_counter() - t:.1f}s", flush=True)
    from services.common.jobs.runtime import JobRuntime
    reloader = JobRuntime("quantizer", store, {"quantize": "tests.hardening:quantize_like"})
    t = time.perf_counter()
    with reloader._cond:  # what a restart does first: every record read and indexed
        reloader._recover()
    reload_s = time.perf_counter() - t
    del reloader
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.perf_counter()
    svc = ServiceProcess(str(tmp / "storage"), port, ctl).start()  # returns once Health answers
    up_s = time.perf_counter() - t
    with ServiceClient("quantizer", svc.address, token=None, credentials=None) as c:
        t = time.perf_counter()
        listed = len(c.list_all())
        list_all_s = time.perf_counter() - t
        t = time.perf_counter()
        c.list(page_size=50, page_token=c.list(page_size=50).next_page_token)
        page_s = time.perf_counter() - t
    print(f"# reload of {args.records} records (JobRuntime._recover) {reload_s:.2f}s; the service process up "
          f"(interpreter, imports, reload, fork server) in {up_s:.2f}s; ListJobs: all {listed} in "
          f"{list_all_s:.2f}s (pages of 200), a page of 50 after a token in {1000 * page_s:.1f} ms", flush=True)

    lat: dict[str, list[float]] = {"Health": [], "GetJob": [], "CancelJob": [], "Submit": []}
    errors: dict[str, list[str]] = {k: [] for k in [*lat, "WatchJob"]}
    samples: list[tuple[float, int]] = []
    state = {"watch_events": 0, "watching": 0, "stop": False}

    async def run():
        chans = [grpc.aio.insecure_channel(svc.address) for _ in range(args.channels)]
        stubs = [quantizer_pb2_grpc.QuantizerServiceStub(ch) for ch in chans]
        probe_ch = grpc.aio.insecure_channel(svc.address)
        probe, health = quantizer_pb2_grpc.QuantizerServiceStub(probe_ch), health_pb2_grpc.HealthStub(probe_ch)
        submitted: list[str] = []

        async def submit(i: int):
            req = quantizer_pb2.SubmitQuantizeRequest(
                spec=json_format.ParseDict(spec(f"flood-{i}"), quantize_spec_pb2.QuantizeSpec()), request_id=f"flood-{i}")
            t0 = time.perf_counter()
            try:
                job = await stubs[i % len(stubs)].SubmitQuantize(req, timeout=10)
                lat["Submit"].append(time.perf_counter() - t0)
                submitted.append(job.job_id)
            except grpc.RpcError as exc:
                errors["Submit"].append(exc.code().name)

        # the first job runs (held): every watcher follows it, as a flow's steps follow theirs
        await submit(0)
        target = submitted[0]

        async def watcher(i: int):
            call = stubs[i % len(stubs)].WatchJob(jobs_pb2.WatchJobRequest(job_id=target))
            state["watching"] += 1
            try:
                async for _ev in call:
                    state["watch_events"] += 1
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    errors["WatchJob"].append(exc.code().name)
            finally:
                state["watching"] -= 1

        async def timed(name: str, coro):
            t0 = time.perf_counter()
            try:
                await coro
                lat[name].append(time.perf_counter() - t0)
            except grpc.RpcError as exc:
                errors[name].append(exc.code().name)

        async def probes():
            k = 0
            while not state["stop"]:
                await asyncio.gather(
                    timed("Health", health.Check(health_pb2.HealthCheckRequest(), timeout=5)),
                    timed("GetJob", probe.GetJob(jobs_pb2.GetJobRequest(job_id=target), timeout=5)))
                if len(submitted) > k + 2:  # cancel a queued job the submitter made
                    k += 1
                    await timed("CancelJob", probe.CancelJob(jobs_pb2.CancelJobRequest(job_id=submitted[k]), timeout=5))
                await asyncio.sleep(1 / args.probe_rate)

        async def submitter():
            i, start = 1, time.perf_counter()
            while not state["stop"]:
                due = start + i / args.submit_rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                asyncio.ensure_future(submit(i))
                i += 1

        async def sampler():
            while not state["stop"]:
                samples.append(_proc_status(svc.proc.pid))
                await asyncio.sleep(1.0)

        watchers = [asyncio.ensure_future(watcher(i)) for i in range(args.watchers)]
        while state["watching"] < args.watchers:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        tasks = [asyncio.ensure_future(f()) for f in (probes, submitter, sampler)]
        await asyncio.sleep(args.seconds)
        state["stop"] = True
        await asyncio.gather(*tasks)
        still = state["watching"]
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        for ch in chans + [probe_ch]:
            await ch.close()
        return still, len(submitted)

    try:
        still, n_submitted = asyncio.run(run())
    finally:
        (ctl / "go").touch()
        svc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    rss = max(m for m, _ in samples)
    threads = max(t for _, t in samples)
    print(f"# flood: {args.watchers} watchers on {args.channels} connections (all {still} still open at the end), "
          f"{args.submit_rate} submits/s ({n_submitted} in {args.seconds}s), probes {args.probe_rate}/s, store of "
          f"{args.records} records; {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("| call | n | p50 (ms) | p99 (ms) | max (ms) | errors |\n|---|---:|---:|---:|---:|---|")
    for name, xs in lat.items():
        errs = errors[name]
        print(f"| {name} | {len(xs)} | {_pct(xs, 0.5):.1f} | {_pct(xs, 0.99):.1f} | {_pct(xs, 1.0):.1f} | "
              f"{len(errs)}{' ' + ', '.join(sorted(set(errs))) if errs else ''} |")
    print(f"| WatchJob streams | {args.watchers} | | | | {len(errors['WatchJob'])} |")
    print(f"# service: RSS peak {rss:.0f} MiB, threads peak {threads}; reload of {args.records} records "
          f"{reload_s:.2f}s")
    print(json.dumps({"p99_ms": {k: round(_pct(v, 0.99), 1) for k, v in lat.items()},
                      "errors": {k: len(v) for k, v in errors.items()}, "rss_mib": round(rss), "threads": threads,
                      "reload_s": round(reload_s, 2)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200, help="distinct jobs submitted")
    ap.add_argument("--threads", type=int, default=10, help="client threads")
    ap.add_argument("--auth", action="store_true", help="with a bearer token (auth interceptor on)")
    ap.add_argument("--flood", action="store_true", help="a phase's load instead (see the module's doc)")
    ap.add_argument("--watchers", type=int, default=1000)
    ap.add_argument("--channels", type=int, default=20, help="connections the watchers share")
    ap.add_argument("--submit-rate", type=float, default=100.0)
    ap.add_argument("--probe-rate", type=float, default=20.0, help="Health+GetJob(+CancelJob) rounds per second")
    ap.add_argument("--records", type=int, default=10_000, help="job records in the store at start")
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    if args.flood:
        return flood(args)

    from services.common.rpc.clients import ServiceClient
    from services.common.jobs.runtime import RuntimeOptions
    from services.common.rpc.service import RunningService, Security
    from services.common.contract.settings import configure_logging
    from services.common.storage.store import LocalStore
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
