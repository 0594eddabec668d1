"""The quantizer's method registry, naming and report measurements, without services."""
from __future__ import annotations

import pytest

from services.common.contract.naming import QUANT_TAGS, QuantMethod, quantized_model_name
from services.quantizer.config import METHOD_OPTIONS, METHODS, linear_in_features
from services.quantizer.ptq import PTQ_METHODS as REGISTRY


def test_registry_is_consistent():
    assert list(METHODS)[:11] == ["gptq", "awq", "hqq", "quarot", "smoothquant", "adaround", "brecq",
                                  "bnb_int8", "bnb_4bit", "smoothquant_w8a8", "w4a16"]  # then the additions
    assert all(isinstance(q, QuantMethod) for q in METHODS.values())
    # every PTQ method of the study's vocabulary has a service method (QLORA is training-time)
    study_ptq = {"INT8", "BNB4BIT", "GPTQ", "QuaRot", "AdaRound", "BRECQ", "AWQ", "HQQ", "SmoothQuant"}
    assert study_ptq <= {q.value for m in REGISTRY.values() for q in m.quant_methods.values()}
    for m in REGISTRY.values():
        assert set(m.defaults) == set(m.options), m.name  # every option has its default
        assert m.options <= METHOD_OPTIONS and m.weights_bits
        assert m.study_tag or all(q in QUANT_TAGS for q in m.quant_methods.values())
        assert m.calibrated <= set(m.algorithms)
        assert bool(m.backend) != bool(m.unavailable), m.name


@pytest.mark.parametrize("source,method,variant,expected", [
    ("Qwen3-4B-base", QuantMethod.INT8, "", "Qwen3-4B-base_Int8_BnB"),  # the study's names
    ("Qwen3-4B-base", QuantMethod.from_any("BNB4BIT"), "", "Qwen3-4B-base_4bit_BnB"),
    ("Qwen3-4B-openmath_SFT_NoPeft_NoQuant", QuantMethod.INT8, "", "Qwen3-4B-openmath_SFT_NoPeft_Int8_BnB"),
    ("Qwen3-8B-base", QuantMethod.from_any("W4A16_GPTQ"), "g64", "Qwen3-8B-base_W4A16_GPTQ_g64"),
    ("Qwen3-8B-base", QuantMethod.from_any("W8A8_SQ_RTN"), "a0.5", "Qwen3-8B-base_W8A8_SQ_RTN_a0.5"),
])
def test_quantized_names(source, method, variant, expected):
    assert quantized_model_name(source, method, variant) == expected


def test_default_output_names_follow_the_options():
    from services.quantizer.config import default_output_name
    assert default_output_name({"source_model": "Qwen3-4B-base", "method": "bnb_4bit"}) == "Qwen3-4B-base_4bit_BnB"
    assert default_output_name({"source_model": "M", "method": "bnb_4bit", "bnb_4bit_quant_type": "fp4",
                                "double_quant": False}) == "M_4bit_FP4_BnB_noDQ"
    assert default_output_name({"source_model": "M", "method": "w4a16", "algorithm": "rtn",
                                "group_size": 32}) == "M_W4A16_RTN_g32"
    assert default_output_name({"source_model": "M", "method": "smoothquant_w8a8"}) == "M_W8A8_SQ_GPTQ"
    # the study's vocabulary: its parametric tags, with the lm_head precision of the quantizer's device
    assert default_output_name({"source_model": "Qwen3-4B-base", "method": "gptq"}, gpu=True) == \
        "Qwen3-4B-base_GPTQ_w4_g64_headbf16"
    assert default_output_name({"source_model": "M_NoQuant", "method": "awq", "weights_bits": 8,
                                "group_size": 128}, gpu=False) == "M_AWQ_w8_g128_headfp32"
    assert default_output_name({"source_model": "M", "method": "hqq", "weights_bits": 3}, gpu=True) == \
        "M_HQQ_w3_g64_headbf16"
    assert default_output_name({"source_model": "M", "method": "quarot"}, gpu=False) == "M_QuaRot_w4_g64_headfp32"
    assert default_output_name({"source_model": "M", "method": "smoothquant", "algorithm": "rtn",
                                "smoothing_strength": 0.5}, gpu=False) == "M_SmoothQuant_w8_alpha0.5_headfp32_rtn"


def test_layer_widths_from_a_qwen3_config():
    cfg = {"hidden_size": 4096, "intermediate_size": 12288, "num_attention_heads": 32, "head_dim": 128,
           "num_hidden_layers": 36}
    widths = linear_in_features(cfg)
    assert widths["self_attn.o_proj"] == 4096 and widths["mlp.down_proj"] == 12288
    assert linear_in_features({"n_embd": 8}) == {}  # unknown architecture: the recipe checks modules


def test_effective_weight_and_quality_of_a_model_against_itself(tiny_model_dir):
    import torch
    from services.common.torch_utils import modeling
    from services.quantizer import report
    lin = torch.nn.Linear(8, 4, bias=True)
    w = report.effective_weight(lin, torch.float32, torch.device("cpu"), chunk=3)
    assert torch.allclose(w, lin.weight, atol=1e-6)
    model = modeling.load_causal_lm(tiny_model_dir, torch.device("cpu"))
    tok = modeling.load_tokenizer(tiny_model_dir)
    q = report.quality(model, model, tok, ["Hello there, how are you?"], 32, torch.device("cpu"))
    assert q["kl_mean"] == pytest.approx(0, abs=1e-6) and q["top1_agreement"] == 1 and q["ppl_delta"] == 0
    errors = report.weight_errors(model, model, torch.float32, torch.device("cpu"))
    assert len(errors) == 14 and all(e["rel_error"] == 0 for e in errors)
    out = report.activation_outliers(model, tok, ["Hello there"], 32, torch.device("cpu"))
    assert len(out) == 14 and all(o["max"] >= o["median"] for o in out)
