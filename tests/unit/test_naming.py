"""The study's quantization tags: built from a method and its parameters, parsed back, checked
against names from the study (its ``tools/test_quant_tag.py``, ``Testing/metrics/*.json`` and model
folders) and ftlab's earlier literal tags."""
from __future__ import annotations

import pytest

from services.common.contract.errors import ValidationError
from services.common.contract.naming import (QuantMethod, check_name, model_tag, parse_tag, quantized_model_name,
                                    tag_quant, trained_model_name, with_kv_bits)

# (method, parameters, the study's tag)
STUDY_TAGS = [
    ("NoQuant", {}, "NoQuant"),
    ("GPTQ", {"bits": 4, "group_size": 64}, "GPTQ_w4_g64"),
    ("AWQ", {"bits": 4, "group_size": 128, "extras": {"head": "fp16"}}, "AWQ_w4_g128_headfp16"),
    ("HQQ", {"bits": 8, "extras": {"head": "fp16"}}, "HQQ_w8_headfp16"),
    ("GPTQ", {"bits": 4, "group_size": 64, "head": "fp16"}, "GPTQ_w4_g64_headfp16"),
    ("QLORA", {"bits": 4, "head": "bf16"}, "QLORA_w4_headbf16"),
    ("QuaRot", {"bits": 4, "group_size": 128, "acts_bits": 4, "kv_bits": 4, "head": "bf16"},
     "QuaRot_w4_g128_a4_kv4_headbf16"),
    ("SmoothQuant", {"bits": 8, "head": "fp32", "extras": {"alpha": 0.5}}, "SmoothQuant_w8_alpha0.5_headfp32"),
    ("smooth_quant", {"bits": 8}, "SmoothQuant_w8"),  # the study's from_any: case, '_' and '-' ignored
    ("adaround", {"bits": 4}, "AdaRound_w4"),
    ("BRECQ", {"bits": 4, "extras": {"seed": 0, "flag": True, "off": False, "none": None}}, "BRECQ_w4_flag_seed0"),
    (QuantMethod.INT8, {}, "Int8_BnB"),          # literal tags of the study
    (QuantMethod.from_any("BNB4BIT"), {}, "4bit_BnB"),
    (QuantMethod.QLORA, {}, "QLORA_w4_headbf16"),
    (QuantMethod.from_any("W4A16_GPTQ"), {}, "W4A16_GPTQ"),  # ftlab's first llm-compressor tags
]


@pytest.mark.parametrize("method,params,expected", STUDY_TAGS)
def test_tag_quant_builds_the_studys_tags(method, params, expected):
    assert tag_quant(method, **params) == expected


@pytest.mark.parametrize("method,params,expected", STUDY_TAGS)
def test_parse_tag_inverts_tag_quant(method, params, expected):
    parsed = parse_tag(expected)
    assert parsed.tag() == expected
    assert parsed.method == QuantMethod.from_any(method)
    for key in ("bits", "group_size", "acts_bits", "kv_bits"):
        if params:  # a literal tag (no parameters given) may carry implied ones: QLORA_w4_headbf16
            assert getattr(parsed, key) == params.get(key)
    if params.get("head"):
        assert parsed.extras["head"] == params["head"]


# Model names from the study (and ftlab's variants): the tag a name ends with.
STUDY_NAMES = [
    ("Qwen3-4B-base_GPTQ_w4_g64_headfp16", QuantMethod.from_any("GPTQ"), 4, 64, {"head": "fp16"}),
    ("Qwen3-4B-base_Int8_BnB", QuantMethod.INT8, None, None, {}),
    ("Qwen3-4B-base_4bit_BnB", QuantMethod.from_any("BNB4BIT"), None, None, {}),
    ("Qwen3-4B-openmath_SFT_NoPeft_Int8_BnB", QuantMethod.INT8, None, None, {}),
    ("Qwen3-4B-openmath_SFT_NoPeft_4bit_BnB", QuantMethod.from_any("BNB4BIT"), None, None, {}),
    ("Qwen3-4B-openmath_SFT_NoPeft_NoQuant", QuantMethod.NO_QUANT, None, None, {}),
    ("Qwen3-8B-openmath_SFT_LoRa256_QLORA_w4_headbf16", QuantMethod.QLORA, 4, None, {"head": "bf16"}),
    ("Qwen3-8B-openmath_SFT_DoRa256_NoQuant", QuantMethod.NO_QUANT, None, None, {}),
    ("Qwen3-8B-openmath_SFT_VeRa512_NoQuant", QuantMethod.NO_QUANT, None, None, {}),
    ("Qwen3-8B-base_W4A16_RTN_g32", QuantMethod.from_any("W4A16_RTN"), None, 32, {}),
    ("Qwen3-8B-base_W8A8_SQ_RTN_a0.5", QuantMethod.from_any("W8A8_SQ_RTN"), None, None, {"a": "0.5"}),
    ("M_4bit_FP4_BnB_noDQ", QuantMethod.from_any("BNB4BIT_FP4"), None, None, {"noDQ": True}),
    ("M_Int8_BnB_t4", QuantMethod.INT8, None, None, {"t": "4"}),
]


@pytest.mark.parametrize("name,method,bits,group,extras", STUDY_NAMES)
def test_model_names_parse_back(name, method, bits, group, extras):
    tag = model_tag(name)
    assert (tag.method, tag.bits, tag.group_size, tag.extras) == (method, bits, group, extras)
    assert name.endswith("_" + tag.tag())


def test_names_without_a_tag_and_unknown_methods():
    assert model_tag("Qwen3-4B-base") is None and model_tag("SmolLM2-135M-Instruct") is None
    with pytest.raises(ValidationError, match="unknown 'FooQuant'; known: NoQuant, INT8"):
        tag_quant("FooQuant")
    with pytest.raises(ValidationError):
        parse_tag("")


def test_study_model_names_are_built():
    assert trained_model_name("Qwen3-8B-base", "openmath", "LoRa", 256, QuantMethod.QLORA) == \
        "Qwen3-8B-openmath_SFT_LoRa256_QLORA_w4_headbf16"
    assert quantized_model_name("Qwen3-4B-openmath_SFT_NoPeft_NoQuant", QuantMethod.INT8) == \
        "Qwen3-4B-openmath_SFT_NoPeft_Int8_BnB"
    assert quantized_model_name("Qwen3-4B-base", "GPTQ_w4_g64_headfp16") == "Qwen3-4B-base_GPTQ_w4_g64_headfp16"


def test_kv_bits_go_where_the_study_puts_them():
    assert with_kv_bits("GPTQ_w4_g64_headfp16", 4) == "GPTQ_w4_g64_kv4_headfp16"
    assert with_kv_bits("GPTQ_w4_g64_a4_headfp16", 2) == "GPTQ_w4_g64_a4_kv2_headfp16"
    assert with_kv_bits("GPTQ_w4_g64_headfp16", 8) == "GPTQ_w4_g64_headfp16"  # 8 and 16: the study's defaults
    assert with_kv_bits("Int8_BnB", 4) == "Int8_BnB_kv4"
    assert with_kv_bits("NoQuant", 4) == "NoQuant_kv4"


def test_bad_names_are_quoted_short():
    [problem] = check_name("output_name", "x" * 10_000)
    assert len(problem) < 200


def test_the_quantization_names_are_the_plugins_and_a_process_without_the_quantizer_knows_them():
    # the evaluator never imports the quantizer, yet parses a W8A16 model's tag (declared in ptq/w8a16.py)
    import subprocess
    import sys
    code = ("import sys; from services.common.contract.naming import with_kv_bits, known_quant_methods; "
            "print(with_kv_bits('W8A16_RTN', 4), 'services.quantizer.ptq.w8a16' in sys.modules, "
            "len(known_quant_methods()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    from services.quantizer.ptq import PTQ_METHODS
    names = {q for m in PTQ_METHODS.values() for q in m.quant_methods.values()}
    assert out.stdout.split() == ["W8A16_RTN_kv4", "True", str(len(names | {"NoQuant", "QLORA"}))], out.stderr


def test_a_name_is_declared_once():
    from services.common.contract.naming import quant_method
    assert quant_method("INT8", tag="Int8_BnB") is QuantMethod.INT8  # the trainer's and bnb_int8's: one name
    for bad in ({"name": "INT8", "tag": "Int8"}, {"name": "gptq"}, {"name": "Int8New", "tag": "Int8_BnB"},
                {"name": "X1", "aliases": ("smooth-quant",)}):
        with pytest.raises(ValueError, match="already"):
            quant_method(**bad)
    assert QuantMethod.from_any("smooth-Quant") == "SmoothQuant" and QuantMethod.from_any("w8a16_rtn").tag == "W8A16_RTN"
