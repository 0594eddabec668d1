"""`make bench`: every benchmark, one after the other, each as its own process (as you would run
it by hand: `.venv/bin/python -m bench.bench_<name>`). Results go to docs/BENCHMARKS.md by hand:
each benchmark prints the table its section shows."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = ["bench_trainer", "bench_quantizer", "bench_evaluator", "bench_overhead", "bench_load",
              "bench_real_model", "bench_eval_peers"]
# benchmarks that need peers installed apart (`make bench` makes .venv-bench): name -> interpreter
ROOT = Path(__file__).resolve().parents[1]
PYTHONS = {"bench_eval_peers": ROOT / ".venv-bench" / "bin" / "python"}


def main() -> int:
    names = sys.argv[1:] or BENCHMARKS
    failed = []
    for name in names:
        print(f"\n===== bench.{name}", flush=True)
        t0 = time.time()
        python = PYTHONS.get(name, Path(sys.executable))
        if not python.exists():
            print(f"===== bench.{name}: skipped, {python} missing (make bench creates it)", flush=True)
            continue
        rc = subprocess.call([str(python), "-m", f"bench.{name}"])
        print(f"===== bench.{name}: exit {rc} in {time.time() - t0:.0f}s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
