"""`make bench`: every benchmark, one after the other, each as its own process (as you would run
it by hand: `.venv/bin/python -m bench.bench_<name>`). Results go to docs/BENCHMARKS.md by hand:
each benchmark prints the table its section shows."""
from __future__ import annotations

import subprocess
import sys
import time

BENCHMARKS = ["bench_trainer", "bench_quantizer", "bench_evaluator", "bench_overhead", "bench_load",
              "bench_real_model"]


def main() -> int:
    names = sys.argv[1:] or BENCHMARKS
    failed = []
    for name in names:
        print(f"\n===== bench.{name}", flush=True)
        t0 = time.time()
        rc = subprocess.call([sys.executable, "-m", f"bench.{name}"])
        print(f"===== bench.{name}: exit {rc} in {time.time() - t0:.0f}s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
