"""AWQ (llm-compressor): activation-aware channel scales searched on calibration data, then
int4/int8 asymmetric grouped weights by round to nearest (its W4A16_ASYM)."""
from __future__ import annotations

from dataclasses import dataclass

from services.common.contract.naming import quant_method
from services.quantizer.ptq import PtqMethod, group_size, register_ptq_method


@dataclass(frozen=True)
class AwqOptions:
    group_size: int = group_size(64)


def recipe(cfg) -> list:
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier

    from services.quantizer.oneshot import weights
    return [AWQModifier(), QuantizationModifier(
        config_groups=weights(cfg.weights_bits, cfg.options["group_size"], symmetric=False), ignore=["lm_head"])]


def quantize(*args) -> None:
    from services.quantizer.oneshot import quantizer
    quantizer(recipe)(*args)


register_ptq_method(PtqMethod(
    "awq", "llm-compressor", (4, 8), 16, {"awq": quant_method("AWQ")}, AwqOptions,
    calibrated=frozenset({"awq"}), study_tag=True,
    summary="AWQ: activation-aware channel scales searched on calibration data, then int4/int8 asymmetric "
            "grouped weights (round to nearest)",
    quantize=quantize, output_format="compressed-tensors", order=1))
