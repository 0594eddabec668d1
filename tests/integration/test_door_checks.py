"""Checks at the door (issue 14, fault 5): requests that could only fail (or silently do less) in
the child are refused at submit, through real gRPC, naming what clashes, and write nothing: a
dataset of another task, a limit larger than the split, an adapter-only or quantized model as a
training base, a model folder without weights to evaluate."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from services.common.storage import artifacts
from services.common.rpc.clients import ServiceClient
from services.common.contract.errors import FtlabError, PreconditionError, ValidationError
from services.common.jobs.runtime import RuntimeOptions
from services.common.rpc.service import RunningService, Security
from tests.conftest import snapshot

SQUAD_COLS = ["id", "title", "context", "question", "answer"]


def _commit(store, bucket, name, files, manifest):
    with tempfile.TemporaryDirectory() as d:
        for path, body in files.items():
            Path(d, path).parent.mkdir(parents=True, exist_ok=True)
            Path(d, path).write_text(body)
        artifacts.commit_dir(store, bucket, name, d, manifest)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from services.common.storage.store import LocalStore
    from services.evaluator.server import SERVICE as EVALUATOR
    from services.trainer.server import SERVICE as TRAINER
    store = LocalStore(tmp_path_factory.mktemp("door") / "storage")
    store.ensure_buckets()
    cfg = json.dumps({"model_type": "qwen3"})
    _commit(store, "models", "base-m", {"config.json": cfg}, {"kind": "base"})
    _commit(store, "models", "adapter-m", {"adapter/adapter_config.json": "{}"},
            {"kind": "trained", "merged": False, "adapter_path": "adapter", "base_model": "base-m"})
    _commit(store, "models", "quant-m", {"config.json": cfg}, {"kind": "quantized",
                                                               "quantization": {"quant_tag": "Int8_BnB"}})
    _commit(store, "models", "empty-m", {"README.md": "no weights"}, {"kind": "base"})
    for name, task, cols in (("arc", "ai2_arc", ["id", "question", "answer"]), ("squad", "squad_v2", SQUAD_COLS)):
        _commit(store, "datasets", name, {"train.parquet": "x", "test.parquet": "x"},
                {"task": task, "splits": {s: {"rows": 4, "columns": cols} for s in ("train", "test")}})
    running = {s.name: RunningService(s, store, "127.0.0.1:0", RuntimeOptions(max_running=0), security=Security())
               for s in (TRAINER, EVALUATOR)}  # accepted jobs queue, never run
    yield store, running
    for s in running.values():
        s.stop(1.0)


T = {"base_model": "base-m", "dataset": "arc", "max_steps": 1}
E = {"model": "base-m", "tasks": [{"task": "arc"}]}
CASES = [
    ("trainer", {**T, "dataset": "squad", "task": "ai2_arc"}, ValidationError, ["task: task 'ai2_arc' requested",
                                                                               "'squad'", "'squad_v2'"]),
    ("trainer", {**T, "train_limit": 100}, ValidationError, ["train_limit: limit 100", "only 4 rows"]),
    ("trainer", {**T, "base_model": "adapter-m"}, PreconditionError, ["base_model: 'adapter-m' is an adapter"]),
    ("trainer", {**T, "base_model": "quant-m"}, PreconditionError, ["base_model: 'quant-m' is quantized"]),
    ("evaluator", {**E, "tasks": [{"task": "arc", "dataset": "squad"}]}, ValidationError,
     ["tasks[0].task: task 'ai2_arc' requested", "'squad_v2'"]),
    ("evaluator", {**E, "tasks": [{"task": "arc", "limit": 100}]}, ValidationError,
     ["tasks[0].limit: limit 100", "only 4 rows"]),
    ("evaluator", {**E, "model": "empty-m"}, PreconditionError, ["model: 'empty-m' holds no model weights"]),
]


def test_requests_that_can_only_fail_later_are_refused_at_the_door(world):
    store, running = world
    failures = []
    for service, spec, error, fragments in CASES:
        before = snapshot(store)
        with ServiceClient(service, running[service].address) as c:
            try:
                job = c.submit(spec)
                failures.append(f"{service} {spec}: accepted as {job.job_id}")
                continue
            except FtlabError as exc:
                if type(exc) is not error or not all(f in str(exc) for f in fragments):
                    failures.append(f"{service} {spec}: {type(exc).__name__}: {exc} (wanted {error.__name__} {fragments})")
        if snapshot(store) != before:
            failures.append(f"{service} {spec}: wrote objects")
    assert not failures, "\n".join(failures)
    with ServiceClient("trainer", running["trainer"].address) as c:  # the good twins are accepted
        c.cancel(c.submit({**T, "dataset": "squad", "task": "squad_v2"}).job_id)
        c.cancel(c.submit({**T, "train_limit": 4}).job_id)
