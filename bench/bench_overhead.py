"""Overhead of the system around one short training job: the same recipe and spec
(a) called in-process (resolve the spec, run ``services.trainer.recipe.run``) and
(b) through the experiment flow: Prefect task -> gRPC submit -> trainer queue -> child process ->
storage fetch/commit -> watch stream -> manifest check.
The job is sized to take about a minute in-process (``--steps``). Prefect's ephemeral server is
started before timing (b) and reported apart: a deployed stack has it running already.

    .venv/bin/python -m bench.bench_overhead [--steps N] [--shared ../shared]
"""
from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("FTLAB_LOG_FORMAT", "text")

TINY = "Qwen3-tiny-base"


def train_spec(steps: int) -> dict:
    return {"peft_method": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "max_steps": steps,
            "per_device_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 0.002,
            "max_seq_length": 512, "train_limit": 256, "seed": 0}


def seed_store(root: Path, shared: Path):
    from services.common.torch_utils import modeling
    from services.common.data.importing import import_dataset
    from services.common.storage.store import LocalStore
    store = LocalStore(root / "storage")
    store.ensure_buckets()
    with tempfile.TemporaryDirectory() as tmp:
        modeling.make_tiny_qwen3(str(shared / "tokenizers" / "qwen3"), tmp, seed=0)
        modeling.commit_base_model(store, TINY, tmp, {"source": "tiny-random-qwen3", "seed": 0})
    import_dataset(store, "arc", "seed", shared / "datasets" / "seed")
    return store


def in_process(store, steps: int, workdir: Path) -> float:
    from services.common.jobs.child import JobContext
    from services.trainer import recipe
    from services.trainer.config import resolve_train_spec
    t0 = time.perf_counter()
    cfg = resolve_train_spec({"base_model": TINY, "dataset": "arc", **train_spec(steps),
                              "output_name": "bench-inprocess"}, store)
    workdir.mkdir(parents=True, exist_ok=True)
    recipe.run(JobContext("bench-inprocess", store, queue.Queue(), str(workdir)), cfg)
    return time.perf_counter() - t0


def through_flow(store, steps: int, root: Path) -> tuple[float, float]:
    import yaml
    from prefect import flow

    from services.common.jobs.runtime import RuntimeOptions
    from services.common.rpc.service import RunningService
    from services.trainer.server import SERVICE as TRAINER
    svc = RunningService(TRAINER, store, "127.0.0.1:0", RuntimeOptions(cancel_grace_s=2.0))
    os.environ.update({"FTLAB_STORAGE": "local", "FTLAB_LOCAL_ROOT": str(store.root),
                       "FTLAB_TRAINER_ADDR": svc.address, "PREFECT_HOME": str(root / "prefect")})
    plan = root / "bench-overhead.yaml"
    plan.write_text(yaml.safe_dump({"name": "bench-overhead", "base_models": [TINY], "datasets": ["arc"],
                                    "train": [{**train_spec(steps), "output_name": "bench-flow"}]}))
    try:
        t0 = time.perf_counter()
        flow(name="warm-up")(lambda: None)()  # starts the ephemeral Prefect server
        startup = time.perf_counter() - t0
        from flows.pipeline import experiment_flow
        t0 = time.perf_counter()
        result = experiment_flow(str(plan), report_dir=str(root / "reports"))
        wall = time.perf_counter() - t0
        statuses = [s["status"] for s in result["steps"]]
        assert statuses == ["skipped", "succeeded"], result["steps"]
        return wall, startup
    finally:
        svc.stop(2.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=170, help="training steps (170: ~60 s in-process on dev-cpu)")
    p.add_argument("--shared", default=os.environ.get("FTLAB_SHARED_DIR", "../shared"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = seed_store(root, Path(args.shared))
        inproc = in_process(store, args.steps, root / "work")
        print(f"in-process recipe: {inproc:.1f} s", flush=True)
        flow_wall, startup = through_flow(store, args.steps, root)
    overhead = flow_wall - inproc
    print(f"training job: tiny Qwen3, LoRA r=8, {args.steps} steps x batch 4")
    print(f"in-process recipe:             {inproc:7.1f} s")
    print(f"through flow + gRPC + storage: {flow_wall:7.1f} s  (the whole flow run, incl. report)")
    print(f"overhead:                      {overhead:7.1f} s  = {100 * overhead / flow_wall:.1f}% of the flow run")
    print(f"Prefect ephemeral server start (once per process, not counted above): {startup:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
