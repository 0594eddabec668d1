"""The quantizer's door: every option, alone and mixed, with bad values of every kind gives a
clear ValidationError (never another exception), quoting at most a short prefix of the value;
methods no library or no CPU can run are FAILED_PRECONDITION naming the alternatives."""
from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

import pytest

from services.common.storage import artifacts
from services.common.contract.errors import PreconditionError, ValidationError
from services.common.storage.store import LocalStore
from services.quantizer.ptq import PTQ_METHODS as REGISTRY
from services.quantizer.config import resolve_quantize_spec

CONFIG = {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
          "head_dim": 16, "num_hidden_layers": 2}
LONG = "x" * 5000
BAD_VALUES = [0, -1, 2**31 - 1, 1e300, float("nan"), float("inf"), -float("inf"), 0.5, True, "x", LONG, [], {}]
FIELDS = ["weights_bits", "group_size", "llm_int8_threshold", "smoothing_strength", "algorithm",
          "bnb_4bit_quant_type", "compute_dtype", "double_quant"]


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    store = LocalStore(tmp_path_factory.mktemp("door") / "storage")
    store.ensure_buckets()
    with tempfile.TemporaryDirectory() as d:
        Path(d, "config.json").write_text(json.dumps(CONFIG))
        artifacts.commit_dir(store, "models", "src", d, {"kind": "base"})
    with tempfile.TemporaryDirectory() as d:
        Path(d, "train.parquet").write_bytes(b"PAR1")
        Path(d, "test.parquet").write_bytes(b"PAR1")
        artifacts.commit_dir(store, "datasets", "arc", d, {"task": "ai2_arc", "splits": {
            s: {"rows": 500, "columns": ["id", "question", "answer"]} for s in ("train", "test")}})
    return store


def _resolve(store, spec):
    try:
        return resolve_quantize_spec(spec, store)
    except (ValidationError, PreconditionError) as exc:
        assert all(len(p) < 1000 for p in getattr(exc, "problems", [str(exc)])), exc
        assert LONG[:100] not in str(exc)
        return exc


@pytest.mark.parametrize("method", [m for m in REGISTRY if not REGISTRY[m].unavailable])
def test_every_bad_value_of_every_option_is_a_validation_error(door, method, monkeypatch):
    monkeypatch.setenv("FTLAB_DEVICE", "cuda")  # the door's GPU answer, so hqq is checked too
    base = {"source_model": "src", "method": method, "dataset": "arc"}
    for field, value in itertools.product(FIELDS, BAD_VALUES):
        out = _resolve(door, {**base, field: value})
        if not isinstance(out, Exception):  # accepted: then it is a value the method really takes
            assert field in REGISTRY[method].options or field == "weights_bits", (field, value)
    # all at once: one answer lists them all
    out = _resolve(door, {**base, "group_size": 0, "weights_bits": "x", "algorithm": LONG,
                          "calibration": {"num_samples": -1, "split": LONG}, "report": {"num_prompts": 1e9}})
    assert isinstance(out, ValidationError) and len(out.problems) >= 4


def test_group_size_zero_and_non_dividing(door):
    out = _resolve(door, {"source_model": "src", "method": "w4a16", "group_size": 0, "dataset": "arc"})
    assert isinstance(out, ValidationError) and "group_size: 0 must be in [1, 65536]" in str(out)
    out = _resolve(door, {"source_model": "src", "method": "gptq", "group_size": 128, "dataset": "arc"})
    assert isinstance(out, ValidationError) and "does not divide" in str(out)  # the 64-wide layers
    out = _resolve(door, {"source_model": "src", "method": "gptq", "group_size": 48, "dataset": "arc"})
    assert isinstance(out, ValidationError) and "group_size: 48 is not a power of two" in str(out)
    assert "does not divide" not in str(out)  # one problem per field



def test_missing_calibration_dataset_names_the_method_once(door):
    # `ftlab quantize --source-model BASE --method gptq` said "required for gptq with gptq"
    out = _resolve(door, {"source_model": "src", "method": "gptq"})
    assert isinstance(out, ValidationError) and "dataset: required for gptq (calibration samples)" in str(out)
    assert "--dataset" in str(out)
    out = _resolve(door, {"source_model": "src", "method": "smoothquant_w8a8"})
    assert "dataset: required for smoothquant_w8a8 with gptq" in str(out)

def test_unavailable_and_gpu_only_methods_are_failed_precondition(door, monkeypatch):
    for name in ("adaround", "brecq"):
        out = _resolve(door, {"source_model": "src", "method": name, "dataset": "arc"})
        assert isinstance(out, PreconditionError) and "use gptq" in str(out) and "awq" in str(out)
    monkeypatch.setenv("FTLAB_DEVICE", "cpu")
    out = _resolve(door, {"source_model": "src", "method": "hqq", "dataset": "arc"})
    assert isinstance(out, PreconditionError) and "needs a CUDA GPU" in str(out) and "gptq or awq" in str(out)
    monkeypatch.setenv("FTLAB_DEVICE", "cuda")
    cfg = _resolve(door, {"source_model": "src", "method": "hqq", "weights_bits": 8, "group_size": 32})
    assert cfg["output_name"] == "src_HQQ_w8_g32_headbf16" and cfg["calibration"] is None


def test_study_methods_resolve_with_their_tags(door, monkeypatch):
    monkeypatch.setenv("FTLAB_DEVICE", "cpu")
    for method, tag in [("gptq", "GPTQ_w4_g64_headfp32"), ("awq", "AWQ_w4_g64_headfp32"),
                        ("quarot", "QuaRot_w4_g64_headfp32"), ("smoothquant", "SmoothQuant_w8_headfp32")]:
        cfg = _resolve(door, {"source_model": "src", "method": method, "dataset": "arc"})
        assert cfg["quant_tag"] == tag and cfg["output_name"] == f"src_{tag}" and cfg["lm_head_dtype"] == "fp32"
        assert cfg["calibration"]["num_samples"] == 128


def test_the_spec_is_read_with_the_schemas_one_idiom(door):
    # a block that is no mapping, a non-integer count, a flag that is no bool: one answer, each named
    out = _resolve(door, {"source_model": "src", "method": "bnb_4bit", "double_quant": "yes", "calibration": "x",
                          "report": {"num_prompts": 2.5}})
    assert isinstance(out, ValidationError) and set(out.problems) >= {
        "double_quant: 'yes' must be true or false", "calibration: 'x' must be a mapping of its fields",
        "report.num_prompts: 2.5 must be an integer"}, out.problems
    # numbers as a generic map or YAML carries them (64.0) are the integers they are
    cfg = resolve_quantize_spec({"source_model": "src", "method": "gptq", "group_size": 32.0, "weights_bits": 4.0,
                                 "dataset": "arc", "calibration": {"num_samples": 16.0}}, door)
    assert (cfg["options"]["group_size"], cfg["weights_bits"], cfg["calibration"]["num_samples"]) == (32, 4, 16)
    assert all(type(v) is int for v in (cfg["options"]["group_size"], cfg["weights_bits"]))
    assert cfg["quant_tag"].startswith("GPTQ_w4_g32_")
