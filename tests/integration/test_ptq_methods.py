"""The study's PTQ vocabulary over real gRPC on the tiny Qwen3: GPTQ (8-bit), AWQ, QuaRot-style
rotation + GPTQ and SmoothQuant each quantize, reload with plain ``from_pretrained``, generate and
are scored by the evaluator; the degradation table has one row per method against the parent;
HQQ is refused on a CPU-only service and AdaRound/BRECQ everywhere (FAILED_PRECONDITION with the
alternatives); a quantized KV cache is an evaluation option recorded in metrics.json and the tag."""
from __future__ import annotations

import json
import math

import pytest

from flows.report_ptq import degradation_table, markdown_section
from services.common.storage import artifacts
from services.common.rpc.clients import state_name
from services.common.contract.errors import PreconditionError, ValidationError
from tests.conftest import TINY, snapshot

SMALL = {"dataset": "arc", "calibration": {"num_samples": 4, "max_seq_length": 48},
         "report": {"num_prompts": 2, "max_seq_length": 48}}
JOBS = {  # tiny layers are 64/128 wide: group size 32
    "Qwen3-tiny-base_GPTQ_w8_g32_headfp32": {"method": "gptq", "weights_bits": 8, "group_size": 32},
    "Qwen3-tiny-base_AWQ_w4_g32_headfp32": {"method": "awq", "group_size": 32},
    "Qwen3-tiny-base_QuaRot_w4_g32_headfp32": {"method": "quarot", "group_size": 32},
    "Qwen3-tiny-base_SmoothQuant_w8_alpha0.5_headfp32_rtn": {"method": "smoothquant", "algorithm": "rtn",
                                                             "smoothing_strength": 0.5},
}
EVAL = {"tasks": [{"task": "arc", "limit": 2}], "batch_size": 2, "max_new_tokens": 4}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ten jobs, each a child process: minutes on a loaded 2-core CPU
def test_study_methods_quantize_reload_and_are_scored(services, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    monkeypatch.setenv("FTLAB_DEVICE", "cpu")  # the door's answer for this CPU-only service
    c, store = services["clients"], services["store"]
    parent_eval = c["evaluator"].submit({"model": TINY, **EVAL}, "eval-parent")
    kv_eval = c["evaluator"].submit({"model": TINY, **EVAL, "kv_cache_dtype": "int4"}, "eval-parent-kv4")
    jobs = {name: c["quantizer"].submit({"source_model": TINY, **SMALL, **spec}, f"q-{name}")
            for name, spec in JOBS.items()}
    evals = {}
    for name, job in jobs.items():
        final = c["quantizer"].wait(job.job_id, 600)
        assert state_name(final.state) == "SUCCEEDED", (name, final.error)
        assert final.outputs["model"] == f"s3://models/{name}/"
        rep = json.loads(store.get_bytes("models", f"{name}/quantization_report.json"))
        row = rep["degradation"]
        assert row["method"] == JOBS[name]["method"] and name.endswith(row["quant_tag"])
        assert math.isfinite(row["kl_mean"]) and 0 <= row["top1_agreement"] <= 1
        # QuaRot unties the embeddings (the rotated lm_head differs): on this embedding-heavy model
        # that doubles the memory; every other method shrinks it.
        assert (row["memory_ratio"] > 1.5) if "QuaRot" in name else (row["memory_ratio"] < 1), row
        meta = json.loads(store.get_bytes("models", f"{name}/quantization_metadata.json"))["quantization"]
        assert meta["lm_head_dtype"] == "fp32" and meta["calibration_size"] == 4
        local = tmp_path / name  # plain transformers loads the folder and generates
        artifacts.fetch_dir(store, "models", name, local)
        tok = AutoTokenizer.from_pretrained(local)
        model = AutoModelForCausalLM.from_pretrained(local, device_map={"": "cpu"})
        ids = tok("Hello", return_tensors="pt")
        assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 3
        evals[name] = c["evaluator"].submit({"model": name, **EVAL}, f"eval-{name}")
    for name, job in {**evals, "parent": parent_eval, "kv4": kv_eval}.items():
        final = c["evaluator"].wait(job.job_id, 600)
        assert state_name(final.state) == "SUCCEEDED", (name, final.error)
        metrics = json.loads(store.get_bytes("evaluations", final.outputs["evaluation"].removeprefix(
            "s3://evaluations/") + "metrics.json"))
        assert metrics["datasets"]["ai2_arc"]["total_samples"] == 2
        if name == "kv4":  # the quantized KV cache, recorded where the study records it
            q = metrics["quantization"]
            assert (q["kv_cache_dtype"], q["kv_cache_bits"], q["quant_tag"]) == ("int4", 4, "NoQuant_kv4")
            assert q["kv_cache"]["backend"] == "quanto" and metrics["spec"]["kv_cache_dtype"] == "int4"
        elif name == "parent":
            assert metrics["quantization"]["kv_cache_dtype"] == metrics["hardware"]["dtype"]  # auto: the model's

    # One row per method against the parent: size, KL, top-1, perplexity, task diff + paired test, speed.
    table = degradation_table(store)
    assert sorted(table["model"]) == sorted(JOBS) and set(table["parent"]) == {TINY}
    for _, r in table.iterrows():
        assert r["disk_ratio"] > 0 and math.isfinite(r["kl_mean"]) and math.isfinite(r["ppl_delta"])
        assert r["ai2_arc__n"] == 2 and r["ai2_arc__mcnemar_p"] is not None and r["eval_speed_ratio"] > 0
    assert "| Qwen3-tiny-base_AWQ_w4_g32_headfp32 " in "\n".join(markdown_section(table))


def test_gpu_only_and_unavailable_methods_are_refused_at_the_door(services, monkeypatch):
    c, store = services["clients"], services["store"]
    before = snapshot(store)
    monkeypatch.setenv("FTLAB_DEVICE", "cpu")
    with pytest.raises(PreconditionError, match="hqq needs a CUDA GPU.*use gptq or awq"):
        c["quantizer"].submit({"source_model": TINY, "method": "hqq", "group_size": 32})
    for method in ("adaround", "brecq"):
        with pytest.raises(PreconditionError, match="no maintained library.*use gptq"):
            c["quantizer"].submit({"source_model": TINY, "method": method, "dataset": "arc"})
    with pytest.raises(ValidationError, match=r"group_size: 0 must be in \[1, 65536\]"):  # was INTERNAL (modulo by zero)
        c["quantizer"].submit({"source_model": TINY, "method": "w4a16", "group_size": 0, "dataset": "arc"})
    with pytest.raises(ValidationError, match="kv_cache_dtype: unknown 'fp3'"):
        c["evaluator"].submit({"model": TINY, **EVAL, "kv_cache_dtype": "fp3"})
    assert snapshot(store) == before


def test_a_quantized_kv_cache_is_what_generate_uses(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.cache_utils import QuantizedCache
    from services.evaluator.kv_cache import generate_kwargs
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4]])
    for kv in ("int8", "int4", "int2"):
        out = model.generate(ids, max_new_tokens=2, do_sample=False, return_dict_in_generate=True,
                             **generate_kwargs(kv))
        assert isinstance(out.past_key_values, QuantizedCache), kv
    assert generate_kwargs("auto") == {}
