"""Cost of MLflow tracking on the embedded default's path: one short LoRA job of the tiny Qwen3
through the real trainer service (started in this process, its job in a child), submitted,
watched to the end, the service stopped — with FTLAB_TRACKING_URI set to a SQLite store (the
embedded default: the service's tracker thread imports MLflow, creates the run, logs params,
tags, per-step and final metrics, and delivers the last batch before the service exits) or
empty (off). Time it from outside, whole process, one command against the other:

    .venv/bin/python -m bench.bench_tracking --prepare /tmp/bt        # once: store + tracking DB
    A: .venv/bin/python -m bench.bench_tracking --root /tmp/bt --tracking
    B: .venv/bin/python -m bench.bench_tracking --root /tmp/bt

Each run trains a new output name, so runs can repeat on one store. The SQLite store is created
by --prepare (MLflow's schema migrations, once per FTLAB_HOME, are not in the A runs).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FTLAB_LOG_FORMAT", "text")
os.environ.setdefault("FTLAB_LOG_LEVEL", "WARNING")

SPEC = {"base_model": "Qwen3-tiny-base", "dataset": "arc", "peft_method": "lora", "lora": {"r": 8}, "max_steps": 5,
        "per_device_batch_size": 4, "gradient_accumulation_steps": 1, "max_seq_length": 256, "train_limit": 20}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", help="folder made by --prepare")
    ap.add_argument("--prepare", metavar="ROOT", help="seed ROOT/storage with the tiny model and ARC, create ROOT/mlflow.db")
    ap.add_argument("--tracking", action="store_true", help="track into ROOT/mlflow.db (else FTLAB_TRACKING_URI is empty)")
    ap.add_argument("--shared", default="../shared")
    args = ap.parse_args()
    if args.prepare:
        from bench.bench_overhead import seed_store
        from services.common.tracking.tracker import client
        root = Path(args.prepare).resolve()
        seed_store(root, Path(args.shared))
        client(f"sqlite:///{root / 'mlflow.db'}")
        print(f"prepared {root}")
        return 0
    root = Path(args.root).resolve()
    os.environ["FTLAB_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}" if args.tracking else ""
    from services.common.rpc.clients import ServiceClient, state_name
    from services.common.jobs.runtime import RuntimeOptions
    from services.common.rpc.service import RunningService
    from services.common.storage.store import LocalStore
    from services.trainer.server import SERVICE
    svc = RunningService(SERVICE, LocalStore(root / "storage"), "127.0.0.1:0", RuntimeOptions())
    try:
        with ServiceClient("trainer", svc.address) as c:
            job = c.run(SPEC | {"output_name": f"bench-{uuid.uuid4().hex[:8]}"}, f"bench:train:{uuid.uuid4().hex}", 600)
    finally:
        t0 = time.perf_counter()
        svc.stop()
    print(state_name(job.state), job.job_id, f"service stop {time.perf_counter() - t0:.2f}s", file=sys.stderr)
    return 0 if state_name(job.state) == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
