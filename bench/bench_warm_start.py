"""Fixed cost of starting a job's child: submit → SUCCEEDED for a job whose recipe needs the
trainer's imports (torch, transformers, peft, the recipe module) and does nothing else, under
``FTLAB_WORKER=spawn`` (a fresh interpreter per job, as before) and ``forkserver`` (the warm
runtime, services/common/jobs/fork_server.py). Each mode runs in its own process, so the fork server
of one cannot help the other; the first job of the warm mode is measured after the service's
warm-up finished (a deployed service is warm long before its first job).

    .venv/bin/python -m bench.bench_warm_start [--jobs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import services.trainer.recipe  # noqa: F401  (what the child needs: preloaded by the fork server)


def noop(ctx, cfg):
    import services.trainer.recipe  # noqa: F401  (spawn: imported here, in the fresh child)
    return {"outputs": {}, "metrics": {}}


def one_mode(jobs: int) -> list[float]:
    from services.common.jobs.runtime import JobRuntime, RuntimeOptions
    from services.common.storage.store import LocalStore
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        store.ensure_buckets()
        rt = JobRuntime("trainer", store, {"noop": "bench.bench_warm_start:noop"}, RuntimeOptions())
        rt.start()
        time.sleep(float(os.environ.get("WARM_WAIT_S", "20")))  # the service is up before jobs arrive
        walls = []
        for _ in range(jobs):
            t0 = time.perf_counter()
            rec = rt.submit("noop", {}, lambda: {})
            while not rt.get(rec.job_id).state.is_terminal():
                time.sleep(0.01)
            assert rt.get(rec.job_id).state.value == "SUCCEEDED", rt.get(rec.job_id).error
            walls.append(time.perf_counter() - t0)
        rt.shutdown(2.0)
        return walls


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=3)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one_mode(args.jobs)), flush=True)
        return 0
    res = {}
    for mode in ("spawn", "forkserver"):
        out = subprocess.run([sys.executable, "-m", "bench.bench_warm_start", "--one", mode, "--jobs", str(args.jobs)],
                             env={**os.environ, "FTLAB_WORKER": mode}, capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(out.stderr[-3000:])
        res[mode] = json.loads(line[7:])
    print("| job start (submit → SUCCEEDED, recipe = trainer imports only) | per job, s | median s |\n|---|---|---:|")
    for mode, walls in res.items():
        print(f"| {mode} | {', '.join(f'{w:.2f}' for w in walls)} | {sorted(walls)[len(walls) // 2]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
