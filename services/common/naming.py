"""The study's naming, in one place for trainer, quantizer, evaluator and reports.

Trained models: ``{base}-{dataset}_SFT_{Peft}{r}_{quant_tag}``
(``Qwen3-8B-openmath_SFT_LoRa256_QLORA_w4_headbf16``, ``Qwen3-4B-openmath_SFT_NoPeft_NoQuant``);
post-training-quantized: the source name with its ``_NoQuant`` tag replaced, or the tag appended
(``Qwen3-4B-openmath_SFT_NoPeft_Int8_BnB``, ``Qwen3-4B-base_Int8_BnB``).
"""
from __future__ import annotations

import enum
import re

from services.common.errors import ValidationError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class QuantMethod(str, enum.Enum):
    """The study's QuantMethod names (training-time and post-training)."""
    NO_QUANT = "NoQuant"
    QLORA = "QLORA"        # 4-bit NF4 base, double quant, bf16 compute, lm_head bf16
    INT8 = "INT8"          # bitsandbytes LLM.int8 (post-training here)
    BNB4BIT = "BNB4BIT"    # bitsandbytes 4-bit (post-training)


QUANT_TAGS = {
    QuantMethod.NO_QUANT: "NoQuant",
    QuantMethod.QLORA: "QLORA_w4_headbf16",
    QuantMethod.INT8: "Int8_BnB",
    QuantMethod.BNB4BIT: "4bit_BnB",
}

# PEFT method -> the study's name fragment ("LoRa256", "DoRa256", "VeRa512", "NoPeft").
PEFT_TAGS = {"lora": "LoRa", "dora": "DoRa", "vera": "VeRa", "none": "NoPeft"}


def tag_quant(method: QuantMethod) -> str:
    return QUANT_TAGS[method]


def check_name(field: str, value: str) -> list[str]:
    """Names become object-key prefixes: no '/', '..', spaces or control characters."""
    if not NAME_RE.match(value or "") or ".." in value:
        return [f"{field}: {value!r} is not a valid name (1-128 of letters, digits, '.', '_', '-'; "
                "starting with a letter or digit; no '..')"]
    return []


def base_stem(base_model: str) -> str:
    """``Qwen3-8B-base`` -> ``Qwen3-8B`` (the study names trained models after the size)."""
    return base_model[: -len("-base")] if base_model.endswith("-base") else base_model


def trained_model_name(base_model: str, dataset: str, peft: str, r: int | None, quant: QuantMethod) -> str:
    peft_part = PEFT_TAGS[peft] + ("" if peft == "none" or r is None else str(r))
    return f"{base_stem(base_model)}-{dataset}_SFT_{peft_part}_{tag_quant(quant)}"


def quantized_model_name(source_model: str, quant: QuantMethod) -> str:
    tag = tag_quant(quant)
    suffix = "_" + tag_quant(QuantMethod.NO_QUANT)
    if source_model.endswith(suffix):
        return source_model[: -len(suffix)] + "_" + tag
    return f"{source_model}_{tag}"


def require_name(field: str, value: str) -> None:
    problems = check_name(field, value)
    if problems:
        raise ValidationError(problems)
