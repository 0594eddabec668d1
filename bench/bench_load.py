"""Throughput of the job API under concurrent clients: SubmitQuantize (idempotent, with request
ids), GetJob, ListJobs and WatchJob replay, against one real service on loopback gRPC over a local
store. The recipe is torch-free (tests/hardening.py), so this measures the API and the runtime,
not a model. Run: ``.venv/bin/python -m bench.bench_load [--jobs 200 --threads 10]``.

``--flood`` (issue #28) measures a service under a phase's load instead: the service in its own
process over a store already holding ``--records`` job records (its start-up reloads them), then
``--watchers`` WatchJob streams held open, ``--submit-rate`` submits per second, and Health, GetJob
and CancelJob probes, for ``--seconds``: their p50/p99 latency and errors, and the service's memory
(RSS) and threads. The client is one asyncio process (grpc.aio), so the watchers cost it no threads.
``--service trainer|quantizer|evaluator``: the real service (its servicer, its door reading the
store, the shared RPC shell) with one change, its recipe: a torch-free one that holds until the
benchmark ends, so 100 submits/s queue real jobs without running models on the machine.
``.venv/bin/python -m bench.bench_load --flood --service trainer [--watchers 1000 --submit-rate 100]``"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
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


# What each service is given under --flood: its job kind, a valid spec for its door (distinct per
# i, so every submit is a new job) and what the store must hold for that door to accept it.
TINY = "Qwen3-tiny-base"


def _train_spec(i: int | str) -> dict:
    return {"base_model": TINY, "dataset": "arc", "peft_method": "lora", "lora": {"r": 4}, "max_steps": 1,
            "train_limit": 8, "output_name": f"flood-{i}"}


def _evaluate_spec(i: int | str) -> dict:
    return {"model": TINY, "tasks": [{"task": "ai2_arc", "limit": 2}], "max_new_tokens": 4, "eval_id": f"flood-{i}"}


def _quantize_spec(i: int | str) -> dict:
    from tests.hardening import spec
    return spec(i)


FLOOD = {"trainer": ("train", _train_spec), "quantizer": ("quantize", _quantize_spec),
         "evaluator": ("evaluate", _evaluate_spec)}


def _seed_store(store, service: str, tmp: Path) -> None:
    """What the service's door reads: the quantizer's light source model; for the trainer and the
    evaluator the tiny Qwen3 (built from ../shared's tokenizer) and the seed ARC dataset."""
    if service == "quantizer":
        from tests.hardening import make_source
        make_source(store)
        return
    from services.common.data.importing import import_dataset
    from services.common.torch_utils import modeling
    from tests.conftest import SEED_DATA, TOKENIZER
    modeling.make_tiny_qwen3(str(TOKENIZER), tmp / "tiny", seed=0)
    modeling.commit_base_model(store, TINY, tmp / "tiny", {"source": "tiny-random-qwen3", "seed": 0})
    import_dataset(store, "arc", "seed", SEED_DATA)


def held(ctx, cfg):
    """The recipe every --flood service runs: one progress event, then it waits for the ``go``
    file (the benchmark's end), so the one running job's watchers stay open and nothing heavy runs."""
    ctx.progress(1, 2)
    go = Path(os.environ[HOLD_ENV], "go")
    while not go.exists():
        time.sleep(0.2)
    return {"outputs": {}, "metrics": {}}


HOLD_ENV = "BENCH_LOAD_CTL"


def serve(service: str, root: str, port: int) -> None:
    """``--serve``: the real service ``service`` over a local store at ``root``, its recipe :func:`held`
    (no warm imports: the recipe needs none), until SIGTERM."""
    import signal
    import threading
    from dataclasses import replace
    from importlib import import_module

    from services.common.contract.settings import configure_logging
    from services.common.jobs.runtime import RuntimeOptions
    from services.common.rpc.service import RunningService
    from services.common.storage.store import LocalStore
    configure_logging()
    sdef = import_module(f"services.{service}.server").SERVICE
    sdef = replace(sdef, recipes={FLOOD[service][0]: "bench.bench_load:held"}, warm_imports=())
    svc = RunningService(sdef, LocalStore(root), f"127.0.0.1:{port}", RuntimeOptions(cancel_grace_s=1.0),
                         metrics_port=None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    svc.stop(2.0)


def _write_records(root: Path, service: str, n: int) -> None:
    """``n`` finished job records of ``service`` in the store, as a research store holds them (a
    few events each)."""
    from services.common.jobs.record import EventType, JobRecord, JobState
    kind, make_spec = FLOOD[service]
    folder = root / "jobs" / service
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time() - n
    for i in range(n):
        rec = JobRecord(job_id=f"{kind}-old-{i:06d}", service=service, kind=kind, spec=make_spec(f"old-{i}"),
                        config=make_spec(f"old-{i}"), request_id=f"old-{i}", created_at=t0 + i)
        rec.add_event(EventType.STATE, "QUEUED")
        rec.transition(JobState.RUNNING, "started")
        for step in range(1, 4):
            rec.add_event(EventType.PROGRESS, step=step, total=3)
        rec.transition(JobState.SUCCEEDED, "succeeded")
        (folder / f"{rec.job_id}.json").write_bytes(rec.to_json())


class _ServiceProcess:
    """``python -m bench.bench_load --serve SERVICE`` in its own process."""

    def __init__(self, service: str, root: Path, port: int, ctl: Path):
        self.service, self.address = service, f"127.0.0.1:{port}"
        self.args = [sys.executable, "-m", "bench.bench_load", "--serve", service, "--root", str(root),
                     "--port", str(port)]
        self.env, self.log = {**os.environ, HOLD_ENV: str(ctl)}, ctl / f"{service}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "_ServiceProcess":
        from services.common.rpc.clients import ServiceClient
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, cwd=Path(__file__).resolve().parents[1], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT)
        with ServiceClient(self.service, self.address, token=None, credentials=None) as c:
            deadline = time.time() + 120
            while not c.healthy():
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{self.service} did not start; see {self.log}:\n"
                                       f"{self.log.read_text()[-2000:]}")
                time.sleep(0.3)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


GOAL_P99_MS = 200  # issue #28's goal for the calls a flow, a probe and a user make while a phase runs
GOAL_CALLS = ("Health", "GetJob", "CancelJob")


def flood(args) -> int:
    """Exit status 1 when the goal (:data:`GOAL_P99_MS`, no errors) is missed."""
    import asyncio
    import socket

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.common.generated.ftlab.v1 import jobs_pb2
    from services.common.rpc.clients import _SERVICES, ServiceClient
    from services.common.storage.store import LocalStore
    from google.protobuf import json_format

    service = args.service
    kind, make_spec = FLOOD[service]
    stub_cls, submit_rpc, spec_cls, request_cls = _SERVICES[service]
    tmp = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    ctl = tmp / "ctl"
    ctl.mkdir()
    store = LocalStore(tmp / "storage")
    store.ensure_buckets()
    _seed_store(store, service, tmp)
    t = time.perf_counter()
    _write_records(tmp / "storage", service, args.records)
    print(f"# wrote {args.records} {service} job records in {time.perf_counter() - t:.1f}s", flush=True)
    from services.common.jobs.runtime import JobRuntime
    reloader = JobRuntime(service, store, {kind: "bench.bench_load:held"})
    t = time.perf_counter()
    with reloader._cond:  # what a restart does first: every record read and indexed
        reloader._recover()
    reload_s = time.perf_counter() - t
    del reloader
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.perf_counter()
    svc = _ServiceProcess(service, tmp / "storage", port, ctl).start()  # returns once Health answers
    up_s = time.perf_counter() - t
    with ServiceClient(service, svc.address, token=None, credentials=None) as c:
        t = time.perf_counter()
        listed = len(c.list_all())
        list_all_s = time.perf_counter() - t
        t = time.perf_counter()
        c.list(page_size=50, page_token=c.list(page_size=50).next_page_token)
        page_s = time.perf_counter() - t
    cli_s = {}
    for limit in ("50", "0"):  # the CLI as a user runs it: the newest 50 (its default), then all of them
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "ftlab.cli", "jobs", "list", "--service", service, "--limit", limit],
                             env={**os.environ, f"FTLAB_{service.upper()}_ADDR": svc.address}, capture_output=True,
                             text=True, timeout=300)
        cli_s[limit] = (time.perf_counter() - t, len(out.stdout.splitlines()), out.returncode)
    print(f"# `ftlab jobs list --service {service}`: {cli_s['50'][0]:.2f}s ({cli_s['50'][1]} lines, rc "
          f"{cli_s['50'][2]}); with --limit 0: {cli_s['0'][0]:.2f}s ({cli_s['0'][1]} lines, rc {cli_s['0'][2]}), "
          "each a new process (interpreter and imports included)", flush=True)
    print(f"# reload of {args.records} records (JobRuntime._recover) {reload_s:.2f}s; the {service} process up "
          f"(interpreter, imports, reload, fork server) in {up_s:.2f}s; ListJobs: all {listed} in "
          f"{list_all_s:.2f}s (pages of 200), a page of 50 after a token in {1000 * page_s:.1f} ms", flush=True)

    lat: dict[str, list[float]] = {"Health": [], "GetJob": [], "CancelJob": [], "Submit": []}
    errors: dict[str, list[str]] = {k: [] for k in [*lat, "WatchJob"]}
    samples: list[tuple[float, int]] = []
    state = {"watch_events": 0, "watching": 0, "stop": False}

    async def run():
        chans = [grpc.aio.insecure_channel(svc.address) for _ in range(args.channels)]
        stubs = [stub_cls(ch) for ch in chans]
        probe_ch = grpc.aio.insecure_channel(svc.address)
        probe, health = stub_cls(probe_ch), health_pb2_grpc.HealthStub(probe_ch)
        submitted: list[str] = []

        async def submit(i: int):
            req = request_cls(spec=json_format.ParseDict(make_spec(i), spec_cls()), request_id=f"flood-{i}")
            t0 = time.perf_counter()
            try:
                job = await getattr(stubs[i % len(stubs)], submit_rpc)(req, timeout=10)
                lat["Submit"].append(time.perf_counter() - t0)
                submitted.append(job.job_id)
            except grpc.RpcError as exc:
                errors["Submit"].append(exc.code().name)
                if len(errors["Submit"]) == 1:
                    print(f"# first Submit error: {exc.code().name}: {exc.details()}", flush=True)

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
    print(f"# flood of the {service}: {args.watchers} watchers on {args.channels} connections (all {still} still open at the end), "
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
    missed = [f"{k} p99 {_pct(lat[k], 0.99):.0f} ms" for k in GOAL_CALLS if not _pct(lat[k], 0.99) <= GOAL_P99_MS]
    missed += [f"{len(v)} {k} errors" for k, v in errors.items() if v]
    print(f"# goal (p99 <= {GOAL_P99_MS} ms for {', '.join(GOAL_CALLS)}; 0 errors): "
          + (f"MISSED: {'; '.join(missed)}" if missed else "met"))
    print(json.dumps({"service": service, "p99_ms": {k: round(_pct(v, 0.99), 1) for k, v in lat.items()},
                      "errors": {k: len(v) for k, v in errors.items()}, "rss_mib": round(rss), "threads": threads,
                      "reload_s": round(reload_s, 2), "up_s": round(up_s, 2),
                      "cli_list_s": {k: round(v[0], 2) for k, v in cli_s.items()}, "goal_met": not missed}))
    return 0 if not missed else 1


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
    ap.add_argument("--service", choices=sorted(FLOOD), default="quantizer", help="--flood: the service flooded")
    ap.add_argument("--serve", choices=sorted(FLOOD), help=argparse.SUPPRESS)  # the flooded service's process
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.root, args.port)
    if args.flood:
        raise SystemExit(flood(args))

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
