"""One configuration per job kind, used by everyone: the flows name a PTQ step exactly as the
quantizer's door does, and ``--dry-run`` estimates a training step's memory exactly as the
trainer's door does (for every shipped experiment and for a spec with defaults only)."""
from __future__ import annotations

import json

import pytest

from flows.dryrun import plan_rows, step_estimate
from flows.experiment import EXPERIMENTS_DIR, as_sent, load, plan
from services.common.storage import artifacts
from services.common.contract.errors import ValidationError
from services.common.generated.ftlab.v1 import quantize_spec_pb2, train_spec_pb2
from services.common.storage.store import LocalStore
from services.quantizer.ptq import PTQ_METHODS as REGISTRY
from services.quantizer.config import QuantizeConfig, resolve_quantize_spec
from services.trainer.config import TrainConfig, resolve_train_spec
from services.trainer.memory import catalogue, estimate_training_memory
from tests.conftest import SEED_DATA

SHIPPED = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
QWEN_06B = "Qwen3-0.6B-base"


@pytest.fixture(scope="module")
def door_store(tmp_path_factory):
    """Every shipped experiment's input models (config.json only: what the doors and the
    estimator read; models without a Qwen3 size get the 0.6B shape) and the seed datasets."""
    from services.common.data.importing import import_dataset
    s = LocalStore(tmp_path_factory.mktemp("door-store"))
    s.ensure_buckets()
    from services.common.data.prepare import prepare
    for task in ("arc", "squad", "openmath"):
        import_dataset(s, task, "seed", SEED_DATA, train_size=200, test_size=50)
    prepared = {d: r for name in SHIPPED for d, r in ((load(name).data or {}).get("prepare") or {}).items()}
    for dataset, recipe in prepared.items():
        if dataset not in ("arc", "squad", "openmath"):
            prepare(s, recipe, name=dataset)  # mini-study's squad-val, from ../shared's raw files
    models = {m for name in SHIPPED for m in load(name).inputs} | {QWEN_06B}
    for m in models:
        size = next((k for k in catalogue() if f"-{k}" in m), "0.6B")
        folder = tmp_path_factory.mktemp(m)
        (folder / "config.json").write_text(json.dumps(catalogue()[size]))
        artifacts.commit_dir(s, "models", m, folder, {"kind": "base", "name": m})
    return s


@pytest.mark.parametrize("device", ["cuda", "cpu"])
@pytest.mark.parametrize("name", SHIPPED)
def test_dry_run_estimates_what_the_trainer_estimates_at_submit(door_store, monkeypatch, name, device):
    monkeypatch.setenv("FTLAB_DEVICE", device)
    monkeypatch.delenv("FTLAB_DEVICE_MEMORY_GB", raising=False)
    exp = load(name)
    rows = {r["output"]: r for r in plan_rows(exp, door_store)}
    steps = exp.stage("train")
    for step in steps:
        at_submit = resolve_train_spec(as_sent(train_spec_pb2.TrainSpec, step.spec), door_store)
        assert at_submit["output_name"] == step.output
        assert at_submit["memory_estimate"] is not None
        assert step_estimate(step, door_store) == at_submit["memory_estimate"], step.output
        assert rows[step.output]["memory"] == f"{at_submit['memory_estimate_gb']:.1f} GiB"


def test_dry_run_of_a_spec_with_defaults_only(door_store, monkeypatch):
    """The bug this fixes: the dry run passed the raw spec to the estimator, which defaulted the
    batch to 1 while the trainer defaults it to 4."""
    monkeypatch.setenv("FTLAB_DEVICE", "cuda")
    exp = plan({"name": "defaults", "base_models": [QWEN_06B], "datasets": ["arc"], "train": [{}]})
    (step,) = exp.steps
    at_submit = resolve_train_spec(as_sent(train_spec_pb2.TrainSpec, step.spec), door_store)
    assert at_submit["per_device_batch_size"] == 4
    assert step_estimate(step, door_store) == at_submit["memory_estimate"]
    one = TrainConfig.resolve({**step.spec, "per_device_batch_size": 1})
    assert estimate_training_memory(catalogue()["0.6B"], one)["total_gb"] < at_submit["memory_estimate_gb"]


# PTQ steps with options, each named by the flow's plan and by the quantizer's door.
PTQ_OPTIONS = [
    ("w4a16", {"algorithm": "rtn", "group_size": 64}),
    ("w4a16", {"group_size": 32}),
    ("gptq", {"group_size": 128, "weights_bits": 8}),
    ("awq", {"group_size": 32}),
    ("smoothquant", {"algorithm": "rtn", "smoothing_strength": 0.5}),
    ("smoothquant_w8a8", {"smoothing_strength": 0.6}),
    ("bnb_int8", {"llm_int8_threshold": 4.0}),
    ("bnb_4bit", {"bnb_4bit_quant_type": "fp4", "double_quant": False}),
    ("quarot", {"weights_bits": 8}),
]


@pytest.mark.parametrize("method,options", PTQ_OPTIONS, ids=[f"{m}-{o}" for m, o in PTQ_OPTIONS])
def test_a_ptq_step_with_options_gets_the_quantizers_own_name(door_store, monkeypatch, method, options):
    monkeypatch.setenv("FTLAB_DEVICE", "cpu")
    exp = plan({"name": "ptq", "base_models": [QWEN_06B],
                "quantize": [{"methods": [method], "sources": ["base"], "options": {**options, "dataset": "arc"}}],
                "evaluate": {"tasks": ["arc"], "include_base": False}})
    (step,) = exp.stage("quantize")
    spec = as_sent(quantize_spec_pb2.QuantizeSpec, step.spec, drop=("output_name",))
    assert step.output == resolve_quantize_spec(spec, door_store)["output_name"]
    assert QuantizeConfig.resolve(spec, door_store).output_name == step.output
    # and the forced name the flow sends is that name, accepted as such
    assert resolve_quantize_spec(as_sent(quantize_spec_pb2.QuantizeSpec, step.spec), door_store)["output_name"] \
        == step.output


def test_w4a16_rtn_g64_is_not_named_after_the_default_variant(door_store, monkeypatch):
    monkeypatch.setenv("FTLAB_DEVICE", "cpu")
    exp = plan({"name": "ptq", "base_models": [QWEN_06B],
                "quantize": [{"methods": ["w4a16"], "sources": ["base"],
                              "options": {"algorithm": "rtn", "group_size": 64}}]})
    (step,) = exp.stage("quantize")
    assert step.output == f"{QWEN_06B}_W4A16_RTN_g64"
    assert "w4a16" in REGISTRY


def test_the_quantizer_refuses_a_forced_study_name_that_is_not_its_own(door_store, monkeypatch):
    """The flows force the name they planned; a plan made on a host whose lm_head precision differs
    from the quantizer's (headbf16 vs headfp32) or with other options is refused, not committed
    under a wrong name. Free names stay free."""
    monkeypatch.setenv("FTLAB_DEVICE", "cpu")
    spec = {"source_model": QWEN_06B, "method": "gptq", "dataset": "arc"}
    own = resolve_quantize_spec(spec, door_store)["output_name"]
    assert own == f"{QWEN_06B}_GPTQ_w4_g64_headfp32"
    for wrong in (f"{QWEN_06B}_GPTQ_w4_g64_headbf16", f"{QWEN_06B}_GPTQ_w4_g128_headfp32"):
        with pytest.raises(ValidationError, match="this quantizer names this job"):
            resolve_quantize_spec({**spec, "output_name": wrong}, door_store)
    for free in (own, "my-gptq-model", f"{QWEN_06B}_mine"):
        assert resolve_quantize_spec({**spec, "output_name": free}, door_store)["output_name"] == free


def test_the_evaluators_door_lists_a_missing_model_with_the_other_problems(door_store):
    from services.evaluator.config import resolve_evaluate_spec
    with pytest.raises(ValidationError) as exc:
        resolve_evaluate_spec({"model": "nope", "tasks": [{"task": "ai2_arc", "limit": 0}], "batch_size": 0},
                              door_store)
    assert any(x.startswith("model: 'nope' not found in the models bucket (it holds: ") for x in exc.value.problems)
    assert any(x.startswith("tasks[0].limit: 0") for x in exc.value.problems)


def test_dry_run_says_when_memory_and_ptq_names_assume_different_devices(monkeypatch):
    from flows.dryrun import render
    monkeypatch.setattr("services.common.hardware.devices.has_gpu", lambda: False)  # this host: no GPU
    monkeypatch.delenv("FTLAB_DEVICE", raising=False)  # estimates: for a CUDA GPU
    exp = plan({"name": "t", "base_models": [QWEN_06B], "datasets": ["arc"], "train": [{"lora": {"r": 4}}],
                "quantize": [{"methods": ["gptq"]}], "evaluate": {"tasks": ["ai2_arc"]}})
    assert exp.stage("quantize")[0].output.endswith("_headfp32")
    text = render(exp, None, "none")
    assert "devices: the memory column is for a CUDA GPU" in text and "…_headbf16" in text
    monkeypatch.setenv("FTLAB_DEVICE", "cpu")
    assert "devices:" not in render(exp, None, "none")
    int8 = plan({"name": "t", "base_models": [QWEN_06B], "datasets": ["arc"], "train": [{"lora": {"r": 4}}],
                 "quantize": [{"methods": ["bnb_int8"]}], "evaluate": {"tasks": ["ai2_arc"]}})
    monkeypatch.delenv("FTLAB_DEVICE")
    text = render(int8, None, "none")
    assert "trainer here estimates for CPU" in text and "…_headbf16" not in text  # Int8_BnB names no lm_head
    monkeypatch.setattr("services.common.hardware.devices.has_gpu", lambda: True)  # a GPU host: one device
    assert "devices:" not in render(exp, None, "none")


def test_an_existing_evaluation_says_where_it_is(door_store):
    from services.common.contract.errors import PreconditionError
    from services.evaluator.config import resolve_evaluate_spec
    spec = {"model": QWEN_06B, "tasks": [{"task": "ai2_arc", "limit": 2}]}
    eval_id = resolve_evaluate_spec(spec, door_store)["eval_id"]
    door_store.put_bytes("evaluations", f"{QWEN_06B}/{eval_id}/manifest.json", b"{}")
    try:
        with pytest.raises(PreconditionError, match=f"s3://evaluations/{QWEN_06B}/{eval_id}/.*another eval_id"):
            resolve_evaluate_spec(spec, door_store)
    finally:
        door_store.delete("evaluations", f"{QWEN_06B}/{eval_id}/manifest.json")
