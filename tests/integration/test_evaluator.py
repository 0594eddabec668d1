"""The evaluator over real gRPC on loopback with the real tiny Qwen3 and the seed data of all three
tasks: the study's layout, CIs, predictions, reruns, adapter-only models, compare, bad input."""
from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from services.common.storage import artifacts
from services.common.contract.errors import NotFoundError, ValidationError
from services.common.generated.ftlab.v1 import jobs_pb2
from services.common.data.task_types import get_type
from tests.conftest import SEED_DATA, TINY, snapshot

TASKS = [{"task": "arc", "limit": 4}, {"task": "squad", "limit": 3}, {"task": "openmath", "limit": 3}]
SPEC = {"model": TINY, "tasks": TASKS, "batch_size": 3, "max_new_tokens": 8, "bootstrap_samples": 200}
TIMING_KEYS = {"latency_seconds", "throughput", "evaluated_at", "hardware", "peak_rss_gb", "wall_time_s",
               "peak_vram_reserved_gb", "peak_vram_allocated_gb", "eval_id", "predictions_uri", "latency_s"}


@pytest.fixture
def ev(services, monkeypatch):
    from services.common.data.importing import import_dataset
    monkeypatch.setenv("FTLAB_CPU_THREADS", "1")  # the job's child process inherits it
    for name in ("squad", "openmath"):
        import_dataset(services["store"], name, "seed", SEED_DATA)
    return services


def _read(store, ev_job):
    prefix = ev_job.outputs["evaluation"].removeprefix("s3://evaluations/")
    metrics = json.loads(store.get_bytes("evaluations", prefix + "metrics.json"))
    preds = pd.read_parquet(io.BytesIO(store.get_bytes("evaluations", prefix + "predictions.parquet")))
    return prefix, metrics, preds


def _strip_timings(obj):
    if isinstance(obj, dict):
        return {k: _strip_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip_timings(v) for v in obj]
    return obj


def test_three_tasks_end_to_end_rerun_and_compare(ev, capsys, monkeypatch):
    c, store = ev["clients"]["evaluator"], ev["store"]
    events = []
    job = c.run(dict(SPEC, eval_id="first"), "ev-1", timeout_s=300, on_event=events.append)
    prefix, metrics, preds = _read(store, job)
    assert prefix == f"{TINY}/first/" and artifacts.read_manifest(store, "evaluations", prefix)["kind"] == "evaluation"

    # The study's layout, with its metric keys, plus ci95 for every headline metric.
    assert set(metrics["datasets"]) == {"ai2_arc", "squad_v2", "OpenMathInstruct-2"}
    for block, n in zip(metrics["datasets"].values(), (4, 3, 3)):
        assert {"type", "total_samples", "format_success_rate", "correct", "incorrect", "accuracy", "metrics",
                "latency_seconds", "tokens_generated", "throughput"} <= set(block)
        assert block["total_samples"] == n == block["correct"] + block["incorrect"]
        assert set(get_type(block["type"]).block_keys) <= set(block["metrics"])
        ci = block["metrics"]["ci95"]
        assert set(ci) == set(get_type(block["type"]).ci_metrics)
        assert ci["format_success_rate"] == [0.0, 0.0]  # a random model never writes \boxed{}: no crash
        assert len(block["tokens_generated"]["per_prompt"]) == n
        assert all(1 <= t <= 8 for t in block["tokens_generated"]["per_prompt"])
        assert {"mean", "median", "p90", "std"} <= set(block["latency_seconds"])
    s = metrics["summary"]
    assert s["total_samples"] == 10 and s["num_datasets"] == 3 and s["throughput"]["samples_per_s"] > 0
    assert metrics["quantization"]["quant_tag"] == "NoQuant" and metrics["spec"]["bootstrap_samples"] == 200
    assert metrics["batch_composition"]["effect"] == "float_rounding"  # batch_size 3, full precision
    assert {"torch", "transformers"} <= set(metrics["versions"]) and metrics["hardware"]["peak_rss_gb"] > 0
    assert metrics["predictions_uri"] == f"s3://evaluations/{prefix}predictions.parquet"

    # Per-item predictions, in item order, with hashes, tokens and latencies.
    assert len(preds) == 10 and preds.parsed.isna().all() and not preds.correct.any()
    assert list(preds.task) == ["ai2_arc"] * 4 + ["squad_v2"] * 3 + ["OpenMathInstruct-2"] * 3
    assert preds.groupby("task").id.apply(lambda ids: ids.is_unique).all()
    assert (preds.prompt_tokens > 50).all() and preds.prompt_sha256.str.len().eq(16).all()

    # Progress with running accuracy streamed through WatchJob.
    progress = [e for e in events if e.type == jobs_pb2.EVENT_TYPE_PROGRESS]
    assert progress[-1].step == progress[-1].total == 10
    assert any("squad_v2__running_accuracy" in e.metrics for e in progress)

    # Same model, seed and items: identical everything but timings.
    again = c.run(dict(SPEC, eval_id="second"), "ev-2", timeout_s=300)
    _, metrics2, preds2 = _read(store, again)
    assert _strip_timings(metrics2) == _strip_timings(metrics)
    cols = ["task", "id", "prompt_sha256", "output", "parsed", "gold", "correct", "generated_tokens"]
    pd.testing.assert_frame_equal(preds[cols], preds2[cols])

    # ftlab compare on the two: no difference, p = 1, through the CLI (table and JSON).
    from ftlab import cli
    monkeypatch.setenv("FTLAB_STORAGE", "local")
    monkeypatch.setenv("FTLAB_LOCAL_ROOT", str(store.root))
    assert cli.main(["compare", f"{TINY}/first", f"s3://evaluations/{TINY}/second/", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert cli.main(["compare", f"{TINY}/first", f"{TINY}/second"]) == 0
    table = capsys.readouterr().out
    assert "McNemar" in table and "warning: generated with different" not in table
    assert cli.main(["compare", f"{TINY}/first", f"{TINY}/nope"]) == 1
    assert out["settings_differ"] == []
    arc = out["tasks"]["ai2_arc"]
    assert arc["shared_items"] == 4 and arc["metrics"]["accuracy"]["diff"] == 0.0
    assert arc["metrics"]["accuracy"]["mcnemar_p"] == 1.0 and arc["metrics"]["accuracy"]["ci95"] == [0.0, 0.0]

    # ftlab eval list: one row per task of each evaluation, the numbers metrics.json holds.
    capsys.readouterr()
    assert cli.main(["eval", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["eval_id"], r["task"]) for r in rows] == [
        (TINY, e, t) for e in ("first", "second") for t in sorted(metrics["datasets"])]
    assert {r["task"]: (r["accuracy"], r["samples"]) for r in rows if r["eval_id"] == "first"} == {
        t: (b["accuracy"], b["total_samples"]) for t, b in metrics["datasets"].items()}
    assert all(r["created"] == artifacts.read_manifest(store, "evaluations", prefix)["created_at"]
               for r in rows if r["eval_id"] == "first")
    assert cli.main(["eval", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["model", "eval", "id", "task", "accuracy", "%", "samples", "created"]
    assert len(table) == 7 and table[1].split()[:5] == [TINY, "first", "OpenMathInstruct-2", "0.00", "3"]


def test_adapter_only_model_is_base_plus_adapter(ev, tmp_path):
    """A trainer output with merged: false (adapter/ only) is loaded as its base + the PEFT adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    store = ev["store"]
    base_dir = tmp_path / "base"
    artifacts.fetch_dir(store, "models", TINY, base_dir)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path / "out"
    peft_model.save_pretrained(out / "adapter")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    name = "Qwen3-tiny-arc_SFT_LoRa4_NoQuant"
    artifacts.commit_dir(store, "models", name, out, {
        "kind": "trained", "base_model": TINY, "parents": [TINY], "merged": False, "adapter_path": "adapter",
        "quantization": {"method": "NoQuant", "quant_tag": "NoQuant"}})
    job = ev["clients"]["evaluator"].run({"model": name, "tasks": [{"task": "arc", "limit": 2}],
                                          "max_new_tokens": 4}, "ev-adapter", timeout_s=300)
    _, metrics, preds = _read(store, job)
    assert metrics["model"]["loaded_as"] == "base+adapter" and metrics["model"]["base_model"] == TINY
    assert len(preds) == 2

    # Without its base the adapter cannot be evaluated: NOT_FOUND at the door, nothing written.
    store.delete("models", f"{TINY}/manifest.json")
    before = snapshot(store)
    with pytest.raises(NotFoundError, match="base model"):
        ev["clients"]["evaluator"].submit({"model": name, "tasks": [{"task": "arc"}]})
    assert snapshot(store) == before


@pytest.mark.parametrize("spec,expected", [
    ({"model": TINY, "tasks": [{"task": "gsm8k"}]}, ["tasks[0].task: unknown task 'gsm8k'"]),
    ({"model": TINY, "tasks": [{"task": "arc", "limit": -3}], "batch_size": -1, "bootstrap_samples": 5},
     ["tasks[0].limit", "batch_size", "bootstrap_samples"]),
    ({"model": TINY, "tasks": [{"task": "arc", "split": "dev"}]}, ["tasks[0].split: dataset 'arc' has no split 'dev'"]),
])
def test_bad_input_names_the_field_and_writes_nothing(ev, spec, expected):
    before = snapshot(ev["store"])
    with pytest.raises(ValidationError) as exc:
        ev["clients"]["evaluator"].submit(spec)
    for fragment in expected:
        assert fragment in str(exc.value), (fragment, str(exc.value))
    assert snapshot(ev["store"]) == before


@pytest.mark.parametrize("spec,field", [
    ({"model": "Qwen3-none-base", "tasks": [{"task": "arc"}]}, "model"),
    ({"model": TINY, "tasks": [{"task": "arc", "dataset": "arc-big"}]}, "tasks[0].dataset"),
])
def test_missing_model_or_dataset_is_not_found(ev, spec, field):
    before = snapshot(ev["store"])
    with pytest.raises(NotFoundError, match=field.replace("[", r"\[").replace("]", r"\]")):
        ev["clients"]["evaluator"].submit(spec)
    assert snapshot(ev["store"]) == before
