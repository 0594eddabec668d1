"""The quantizer over real gRPC on the tiny Qwen3: every method runs, its output reloads with plain
``from_pretrained`` and generates, the evaluator scores it, and the report holds real measurements."""
from __future__ import annotations

import json
import math
import shutil

import pytest

from services.common.storage import artifacts
from services.common.rpc.clients import state_name
from services.common.contract.errors import NotFoundError, PreconditionError, ValidationError
from services.common.generated.ftlab.v1 import jobs_pb2
from tests.conftest import TINY, snapshot

SMALL = {"calibration": {"num_samples": 8, "max_seq_length": 64}, "report": {"num_prompts": 3, "max_seq_length": 64}}
ADAPTER = "Qwen3-tiny-arc_SFT_LoRa4_NoQuant"  # trained with merge_after_train=False: an adapter folder only
# One job per method: the study's defaults, except the group size the tiny model's 64-wide layers
# need, and a 4-bit FP4 variant on the adapter (merged into its base first).
JOBS = {
    "Qwen3-tiny-base_Int8_BnB": {"source_model": TINY, "method": "bnb_int8", "dataset": "arc"},
    "Qwen3-tiny-base_W8A8_SQ_GPTQ": {"source_model": TINY, "method": "smoothquant_w8a8", "dataset": "arc"},
    "Qwen3-tiny-base_W4A16_RTN_g32": {"source_model": TINY, "method": "w4a16", "algorithm": "rtn",
                                      "group_size": 32, "dataset": "arc"},
    # no dataset: the trained model's own dataset gives the held-out prompts
    "Qwen3-tiny-arc_SFT_LoRa4_4bit_FP4_BnB_noDQ": {"source_model": ADAPTER, "method": "bnb_4bit",
                                                   "bnb_4bit_quant_type": "fp4", "double_quant": False},
}
STUDY_FIELDS = {"method", "weights_bits", "activations_bits", "group_size", "lm_head_dtype", "backend",
                "kv_cache_dtype", "calibration_size", "calibration_hash", "quant_tag"}


def _json(store, key):
    return json.loads(store.get_bytes("models", key))


def test_every_method_quantizes_reloads_generates_and_is_scored(services, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    c, store = services["clients"], services["store"]
    train = c["trainer"].submit({"base_model": TINY, "dataset": "arc", "max_steps": 1, "train_limit": 4,
                                 "per_device_batch_size": 4, "gradient_accumulation_steps": 1, "max_seq_length": 128,
                                 "lora": {"r": 4}, "merge_after_train": False}, "adapter-train")
    jobs = {name: c["quantizer"].submit({**SMALL, **spec}, f"q-{name}")
            for name, spec in JOBS.items() if spec["source_model"] == TINY}
    assert state_name(c["trainer"].wait(train.job_id, 600).state) == "SUCCEEDED"
    assert not store.exists("models", f"{ADAPTER}/config.json")  # adapter only
    jobs.update({name: c["quantizer"].submit({**SMALL, **spec}, f"q-{name}")
                 for name, spec in JOBS.items() if spec["source_model"] == ADAPTER})
    events = {name: [] for name in JOBS}
    reports = {}
    evals = {}
    for name, job in jobs.items():
        final = c["quantizer"].wait(job.job_id, 600, on_event=events[name].append)
        assert state_name(final.state) == "SUCCEEDED", (name, final.error)
        assert final.outputs["model"] == f"s3://models/{name}/"
        # Streamed while running: progress steps and the report's numbers as METRICS events.
        streamed = {k for e in events[name] if e.type == jobs_pb2.EVENT_TYPE_METRICS for k in e.metrics}
        assert {"size_ratio", "kl_mean", "top1_agreement", "weight_rel_error_mean"} <= streamed
        assert [e.step for e in events[name] if e.type == jobs_pb2.EVENT_TYPE_PROGRESS] == [1, 2, 3, 4, 5, 6]
        assert {"size_ratio", "kl_mean", "top1_agreement", "ppl_delta"} <= set(final.metrics)

        source = JOBS[name]["source_model"]
        manifest = artifacts.read_manifest(store, "models", name)
        assert manifest["kind"] == "quantized" and manifest["parents"] == [source]
        meta = _json(store, f"{name}/quantization_metadata.json")
        q = meta["quantization"]
        assert STUDY_FIELDS <= set(q) and name.endswith("_" + q["quant_tag"])
        if source == ADAPTER:  # merged into its base first, and the metadata says so
            assert meta["merged_adapter"]["base_model"] == TINY and meta["merged_adapter"]["adapter_path"] == "adapter"
            assert manifest["merged_adapter"]["base_model"] == TINY
            assert q["options"]["bnb_4bit_quant_type"] == "fp4" and q["options"]["double_quant"] is False
        rep = reports[name] = _json(store, f"{name}/quantization_report.json")
        qual = rep["quality"]
        assert qual["prompts"] == 3 and math.isfinite(qual["kl_mean"]) and qual["kl_mean"] >= 0
        assert 0 <= qual["top1_agreement"] <= 1 and math.isfinite(qual["ppl_delta"])
        assert len(rep["weights"]["layers"]) == 14  # 2 decoder layers x 7 linear layers
        assert all(0 < r["rel_error"] < 1 for r in rep["weights"]["layers"]), name
        outliers = rep["activation_outliers"]["layers"]
        assert len(outliers) == 14 and all(o["max"] >= o["median"] > 0 for o in outliers)
        assert rep["size"]["quantized_layers_bytes"]["ratio"] < 0.3, name  # fp32 -> 8 or 4 bits (+ scales)
        calibrated = name.endswith("SQ_GPTQ")
        assert (q["calibration_size"], bool(q["calibration_hash"])) == ((8, True) if calibrated else (None, False))
        if calibrated:  # held-out prompts never overlap the calibration samples
            assert meta["calibration"]["report"]["disjoint_from_calibration"]
            assert manifest["calibration_dataset"] == "arc"

        # Plain transformers loads the folder (compressed-tensors / bitsandbytes config) and generates.
        local = tmp_path / name
        artifacts.fetch_dir(store, "models", name, local)
        tok = AutoTokenizer.from_pretrained(local)
        model = AutoModelForCausalLM.from_pretrained(local, device_map={"": "cpu"})
        ids = tok("Hello", return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
        assert out.shape[1] == ids["input_ids"].shape[1] + 3
        evals[name] = c["evaluator"].submit({"model": name, "tasks": [{"task": "arc", "limit": 2}],
                                             "batch_size": 2, "max_new_tokens": 4}, f"eval-{name}")

    # 4-bit weights are coarser than 8-bit ones: the per-layer error says so.
    err = {n: r["weights"]["summary"]["rel_error_mean"] for n, r in reports.items()}
    assert err["Qwen3-tiny-base_W4A16_RTN_g32"] > err["Qwen3-tiny-base_Int8_BnB"]
    assert err["Qwen3-tiny-arc_SFT_LoRa4_4bit_FP4_BnB_noDQ"] > err["Qwen3-tiny-base_W8A8_SQ_GPTQ"]
    # SmoothQuant rescaled the norm/linear pairs it smooths; the report compares them composed.
    assert any(r["compared_with_norm"] for r in reports["Qwen3-tiny-base_W8A8_SQ_GPTQ"]["weights"]["layers"])

    for name, job in evals.items():  # the evaluator loads and scores every format
        final = c["evaluator"].wait(job.job_id, 600)
        assert state_name(final.state) == "SUCCEEDED", (name, final.error)
        prefix = final.outputs["evaluation"].removeprefix("s3://evaluations/")
        metrics = json.loads(store.get_bytes("evaluations", prefix + "metrics.json"))
        assert name.endswith("_" + metrics["quantization"]["quant_tag"])
        assert metrics["datasets"]["ai2_arc"]["total_samples"] == 2

    # A quantized model is not quantized again; the same output is not overwritten.
    before = snapshot(store)
    with pytest.raises(PreconditionError, match="already quantized"):
        c["quantizer"].submit({"source_model": "Qwen3-tiny-base_W4A16_RTN_g32", "method": "bnb_int8"})
    with pytest.raises(PreconditionError, match="already exists"):
        c["quantizer"].submit({"source_model": TINY, "method": "bnb_int8"})
    assert snapshot(store) == before


def _already_quantized_import(store, tiny_model_dir, tmp_path):
    """An imported checkpoint that is already quantized (its config.json says so)."""
    from services.common.torch_utils import modeling
    folder = tmp_path / "prequant"
    shutil.copytree(tiny_model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (folder / "config.json").write_text(json.dumps(cfg))
    modeling.commit_base_model(store, "prequantized-base", folder, {"source": "test"})


@pytest.mark.parametrize("spec,error,expected", [
    ({"source_model": TINY, "method": "awq9", "llm_int8_threshold": -1.0},
     ValidationError, ["method: unknown 'awq9'; known: gptq, awq, hqq, quarot, smoothquant, adaround, brecq, "
                       "bnb_int8, bnb_4bit, smoothquant_w8a8, w4a16", "llm_int8_threshold: -1.0"]),
    ({"source_model": TINY, "method": "w4a16", "group_size": 48, "weights_bits": 8, "double_quant": False,
      "algorithm": "awq", "dataset": "arc"},
     # 48: not a power of two, refused without reading the model (the widths check needs storage)
     ValidationError, ["group_size: 48 is not a power of two", "weights_bits: 8 is not supported by w4a16 (supports: 4)",
                       "double_quant: does not apply to method w4a16", "algorithm: unknown 'awq'"]),
    ({"source_model": TINY, "method": "w4a16", "group_size": 128, "dataset": "arc"},
     ValidationError, ["group_size: 128 does not divide", "self_attn.o_proj (in_features 64)",
                       "model.layers.{0..1}.self_attn.q_proj (in_features 64)"]),
    ({"source_model": TINY, "method": "bnb_4bit", "weights_bits": 3, "bnb_4bit_quant_type": "int4",
      "smoothing_strength": 2.0},
     ValidationError, ["weights_bits: 3 is not supported by bnb_4bit", "bnb_4bit_quant_type: unknown 'int4'",
                       "smoothing_strength: 2.0 must be in [0, 1]", "smoothing_strength: does not apply"]),
    ({"source_model": TINY, "method": "smoothquant_w8a8"},
     ValidationError, ["dataset: required for smoothquant_w8a8 with gptq"]),
    ({"source_model": TINY, "method": "smoothquant_w8a8", "dataset": "arc",
      "calibration": {"num_samples": 5000, "split": "train"}, "report": {"num_prompts": 999}},
     ValidationError, ["calibration.num_samples: 5000 but dataset 'arc' split 'train' has only 1000 rows",
                       "report.num_prompts: 999 but only 200 held-out rows"]),
    ({"source_model": TINY, "method": "smoothquant_w8a8", "dataset": "arc", "calibration": {"split": "dev"},
      "output_name": "bad/name"},
     ValidationError, ["dataset: 'arc' has no split 'dev'", "output_name: 'bad/name'"]),
    ({"source_model": TINY, "method": "w4a16", "dataset": "nope", "group_size": 32},
     NotFoundError, ["dataset: 'nope' not found"]),
    ({"source_model": "prequantized-base", "method": "bnb_int8"},
     PreconditionError, ["'prequantized-base' is already quantized (gptq)"]),
])
def test_bad_requests_name_every_problem_and_write_nothing(services, tiny_model_dir, tmp_path, spec, error,
                                                           expected):
    store = services["store"]
    _already_quantized_import(store, tiny_model_dir, tmp_path)
    before = snapshot(store)
    with pytest.raises(error) as exc:
        services["clients"]["quantizer"].submit(spec, "bad")
    for fragment in expected:
        assert fragment in str(exc.value), (fragment, str(exc.value))
    assert snapshot(store) == before
    assert not services["clients"]["quantizer"].list_all()
