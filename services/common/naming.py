"""The study's naming, in one place for trainer, quantizer, evaluator and reports.

Trained models: ``{base}-{dataset}_SFT_{Peft}{r}_{quant_tag}``
(``Qwen3-8B-openmath_SFT_LoRa256_QLORA_w4_headbf16``, ``Qwen3-4B-openmath_SFT_NoPeft_NoQuant``);
post-training-quantized: the source name with its ``_NoQuant`` tag replaced, or the tag appended
(``Qwen3-4B-openmath_SFT_NoPeft_Int8_BnB``, ``Qwen3-4B-base_Int8_BnB``).
"""
from __future__ import annotations

import enum
import re

from services.common.errors import ValidationError, quote

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class QuantMethod(str, enum.Enum):
    """The study's QuantMethod names (training-time and post-training)."""
    NO_QUANT = "NoQuant"
    QLORA = "QLORA"        # 4-bit NF4 base, double quant, bf16 compute, lm_head bf16
    INT8 = "INT8"          # bitsandbytes LLM.int8 (post-training here)
    BNB4BIT = "BNB4BIT"    # bitsandbytes 4-bit NF4 (post-training; the study's default 4-bit)
    BNB4BIT_FP4 = "BNB4BIT_FP4"      # bitsandbytes 4-bit FP4
    W8A8_SQ_GPTQ = "W8A8_SQ_GPTQ"    # SmoothQuant + GPTQ int8 weights, int8 dynamic activations (llm-compressor)
    W8A8_SQ_RTN = "W8A8_SQ_RTN"      # SmoothQuant + round-to-nearest int8 W8A8 (llm-compressor)
    W4A16_GPTQ = "W4A16_GPTQ"        # GPTQ int4 grouped weights, 16-bit activations (llm-compressor)
    W4A16_RTN = "W4A16_RTN"          # round-to-nearest int4 grouped weights (llm-compressor)


QUANT_TAGS = {
    QuantMethod.NO_QUANT: "NoQuant",
    QuantMethod.QLORA: "QLORA_w4_headbf16",
    QuantMethod.INT8: "Int8_BnB",
    QuantMethod.BNB4BIT: "4bit_BnB",
    QuantMethod.BNB4BIT_FP4: "4bit_FP4_BnB",
    QuantMethod.W8A8_SQ_GPTQ: "W8A8_SQ_GPTQ",
    QuantMethod.W8A8_SQ_RTN: "W8A8_SQ_RTN",
    QuantMethod.W4A16_GPTQ: "W4A16_GPTQ",
    QuantMethod.W4A16_RTN: "W4A16_RTN",
}

# PEFT method -> the study's name fragment ("LoRa256", "DoRa256", "VeRa512", "NoPeft").
PEFT_TAGS = {"lora": "LoRa", "dora": "DoRa", "vera": "VeRa", "none": "NoPeft"}


def tag_quant(method: QuantMethod) -> str:
    return QUANT_TAGS[method]


def check_name(field: str, value: str) -> list[str]:
    """Names become object-key prefixes: no '/', '..', spaces or control characters."""
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        return [f"{field}: {quote(value)} is not a valid name (1-128 of letters, digits, '.', '_', '-'; "
                "starting with a letter or digit; no '..')"]
    return []


def base_stem(base_model: str) -> str:
    """``Qwen3-8B-base`` -> ``Qwen3-8B`` (the study names trained models after the size)."""
    return base_model[: -len("-base")] if base_model.endswith("-base") else base_model


def trained_model_name(base_model: str, dataset: str, peft: str, r: int | None, quant: QuantMethod) -> str:
    peft_part = PEFT_TAGS[peft] + ("" if peft == "none" or r is None else str(r))
    return f"{base_stem(base_model)}-{dataset}_SFT_{peft_part}_{tag_quant(quant)}"


def quantized_model_name(source_model: str, quant: QuantMethod, variant: str = "") -> str:
    """``variant`` names non-default options after the tag (``W4A16_GPTQ_g32``, ``4bit_BnB_noDQ``)."""
    tag = tag_quant(quant) + (f"_{variant}" if variant else "")
    suffix = "_" + tag_quant(QuantMethod.NO_QUANT)
    if source_model.endswith(suffix):
        return source_model[: -len(suffix)] + "_" + tag
    return f"{source_model}_{tag}"


def require_name(field: str, value: str) -> None:
    problems = check_name(field, value)
    if problems:
        raise ValidationError(problems)
