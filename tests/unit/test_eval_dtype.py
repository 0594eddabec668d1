"""The EvaluateSpec's ``dtype`` (issue 25, like for like): the evaluator's door accepts the dtypes its
engines honour for unquantized weights, refuses any other value and a dtype for a model whose
weights are quantized (they compute in their own), with the other problems at once and nothing
written; the default keeps the config, and so the eval ids of earlier evaluations, as they were."""
from __future__ import annotations

import pytest

from services.common.contract.errors import ValidationError
from services.common.generated.ftlab.v1 import evaluate_spec_pb2
from services.evaluator.config import DTYPES, EvaluateConfig, quantized_dtype, resolve_evaluate_spec
from tests.conftest import SEED_DATA
from tests.unit.test_seed_report import _model

TASKS = [{"task": "ai2_arc", "limit": 2}]


@pytest.fixture
def door(store, tmp_path):
    from services.common.data.importing import import_dataset
    import_dataset(store, "arc", "seed", SEED_DATA, train_size=20, test_size=10)
    _model(store, tmp_path, "P", {"kind": "base"})
    _model(store, tmp_path, "P_Int8_BnB", {"kind": "quantized", "parents": ["P"],
                                          "quantization": {"method": "INT8", "format": "bitsandbytes"}})
    _model(store, tmp_path, "P-arc_SFT_LoRa4_QLORA_w4_headbf16", {
        "kind": "trained", "merged": False, "adapter_path": "adapter", "base_model": "P", "parents": ["P"],
        "quantization": {"method": "QLORA"}})
    _model(store, tmp_path, "P-arc_SFT_LoRa4_QLORA_merged", {  # merged: unquantized weights
        "kind": "trained", "base_model": "P", "parents": ["P"], "quantization": {"method": "QLORA"}})
    return store


def _keys(store):
    return {b: sorted(store.list_keys(b, "")) for b in ("models", "evaluations", "datasets")}


def test_the_default_leaves_the_config_and_eval_id_as_before(door):
    plain = resolve_evaluate_spec({"model": "P", "tasks": TASKS}, door)
    assert "dtype" not in plain and plain == resolve_evaluate_spec({"model": "P", "tasks": TASKS, "dtype": "auto"}, door)
    compute = resolve_evaluate_spec({"model": "P", "tasks": TASKS, "dtype": "compute"}, door)
    assert compute["dtype"] == "compute" and compute["eval_id"] != plain["eval_id"]  # another scoring, another id
    assert EvaluateConfig.from_dict(compute).dtype == "compute" and EvaluateConfig.from_dict(plain).dtype == "auto"
    for dtype in DTYPES:  # every value the door takes comes through the proto field
        assert evaluate_spec_pb2.EvaluateSpec(model="P", dtype=dtype).dtype == dtype


def test_an_unknown_dtype_is_refused_with_the_other_problems(door):
    before = _keys(door)
    with pytest.raises(ValidationError) as exc:
        resolve_evaluate_spec({"model": "P", "tasks": TASKS, "dtype": "float16", "batch_size": 0}, door)
    assert "dtype: 'float16' is not one of auto, compute, float32, bfloat16" in exc.value.problems
    assert any(p.startswith("batch_size: 0") for p in exc.value.problems)
    assert _keys(door) == before


@pytest.mark.parametrize("model, what", [("P_Int8_BnB", "is quantized (INT8)"),
                                         ("P-arc_SFT_LoRa4_QLORA_w4_headbf16", "is an adapter on a QLORA-quantized base")])
def test_a_dtype_for_quantized_weights_is_refused_not_ignored(door, model, what):
    for dtype in ("float32", "bfloat16", "compute"):
        with pytest.raises(ValidationError) as exc:
            resolve_evaluate_spec({"model": model, "tasks": TASKS, "dtype": dtype}, door)
        assert exc.value.problems == [f"dtype: {dtype!r} cannot be honoured: model {model!r} {what}, its weights "
                                      "compute in their own dtype; dtype sets unquantized weights only (leave it unset)"]
    assert "dtype" not in resolve_evaluate_spec({"model": model, "tasks": TASKS}, door)
    # a QLoRA fine-tune merged into full weights is unquantized: its dtype is the caller's to choose
    merged = resolve_evaluate_spec({"model": "P-arc_SFT_LoRa4_QLORA_merged", "tasks": TASKS, "dtype": "float32"}, door)
    assert merged["dtype"] == "float32"


def test_the_dtype_quantized_weights_compute_in():
    # as the HF engine loads them (services/common/torch_utils/modeling.py): QLoRA's NF4 base in bf16,
    # bitsandbytes INT8/4-bit, HQQ and an INT8 base in the device's compute dtype
    assert quantized_dtype("QLORA") == "bfloat16"
    assert {quantized_dtype(m) for m in ("INT8", "BNB_4BIT", "HQQ")} == {"compute"}
