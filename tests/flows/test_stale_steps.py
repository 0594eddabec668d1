"""Stale flow steps (issue 14, fault 1): a step is "already done" only while its output artifact is
committed. Train, quantize and evaluate through the flow's real step function against real
services (the real trainer; quantizer and evaluator with their real validation and torch-free
recipes that commit where the real ones do, to keep the test short); delete the three artifacts
from storage; run the same steps again: each runs again under a new attempt (a new job), commits
its artifact again, and the report says it was re-run and why."""
from __future__ import annotations

import time

import pytest

from flows.experiment import plan
from flows.pipeline import aggregate, run_step
from services.common.storage import artifacts
from tests.conftest import TINY

pytestmark = pytest.mark.slow

PLAN = {"name": "stale", "base_models": [TINY], "datasets": ["arc"],
        "train": [{"peft_method": "lora", "lora": {"r": 4}, "max_steps": 1, "train_limit": 4,
                   "per_device_batch_size": 2, "gradient_accumulation_steps": 1, "max_seq_length": 128,
                   "save_steps": 0}],
        "quantize": {"methods": ["bnb_int8"]},
        "evaluate": {"tasks": [{"task": "ai2_arc", "limit": 2}], "batch_size": 2, "max_new_tokens": 4}}


def _steps(exp):
    """train, quantize, and the evaluation of the quantized model (the plan evaluates every model)."""
    quantized = exp.stage("quantize")[0].output
    return [s for s in exp.steps if s.stage != "evaluate" or s.output.startswith(quantized + "/")]


def _run_all(exp):
    done = {}
    for step in _steps(exp):
        upstream = [done[k] for k in done if any(k.endswith(":" + d) for d in step.after)]
        done[step.key] = run_step.fn(step, exp.name, 600, upstream)
    return done


def test_a_step_whose_artifact_was_deleted_runs_again(services, monkeypatch, tmp_path, request):
    store = services["store"]
    monkeypatch.setenv("FTLAB_STORAGE", "local")
    monkeypatch.setenv("FTLAB_LOCAL_ROOT", str(store.root))
    from services.common.jobs.runtime import RuntimeOptions
    from services.common.rpc.service import RunningService, Security
    from tests.hardening import evaluator_def, model_service_def
    light = [RunningService(d, store, "127.0.0.1:0", RuntimeOptions(), security=Security())
             for d in (model_service_def(), evaluator_def())]
    request.addfinalizer(lambda: [s.stop(1.0) for s in light])
    monkeypatch.setenv("FTLAB_TRAINER_ADDR", services["running"]["trainer"].address)
    monkeypatch.setenv("FTLAB_QUANTIZER_ADDR", light[0].address)
    monkeypatch.setenv("FTLAB_EVALUATOR_ADDR", light[1].address)
    exp = plan(PLAN)
    assert [s.stage for s in _steps(exp)] == ["train", "quantize", "evaluate"]
    first = _run_all(exp)
    assert [r["status"] for r in first.values()] == ["succeeded"] * 3, first

    for step in _steps(exp):  # someone deletes the artifacts (the whole folder, manifest included)
        for key in store.list_keys(step.bucket, step.output + "/"):
            store.delete(step.bucket, key)
        assert not artifacts.read_manifest(store, step.bucket, step.output)

    second = _run_all(exp)
    for step in _steps(exp):
        r1, r2 = first[step.key], second[step.key]
        assert r2["status"] == "succeeded" and r2["job_id"] != r1["job_id"], (step.key, r2)
        assert f"job {r1['job_id']} SUCCEEDED but its output is no longer committed" in r2["rerun"]
        assert "re-run as attempt 2" in r2["rerun"]
        assert artifacts.read_manifest(store, step.bucket, step.output) is not None  # committed again

    report = aggregate.fn(exp, "r2", list(second.values()), str(tmp_path / "reports"), time.time())
    md = store.get_bytes("reports", "stale/r2/report.md").decode()
    assert "## Re-run steps" in md and "no longer committed" in md, report["uri"]

    third = _run_all(exp)  # committed now: skipped, no new job
    assert [r["status"] for r in third.values()] == ["skipped"] * 3
