"""GPTQ (llm-compressor): int4/int8 symmetric grouped weights with second-order error
compensation on calibration data, 16-bit activations, lm_head unquantized."""
from __future__ import annotations

from dataclasses import dataclass

from services.common.contract.naming import quant_method
from services.quantizer.ptq import PtqMethod, group_size, register_ptq_method


@dataclass(frozen=True)
class GptqOptions:
    group_size: int = group_size(64)


def recipe(cfg) -> list:
    from llmcompressor.modifiers.quantization import GPTQModifier

    from services.quantizer.oneshot import weights
    return [GPTQModifier(config_groups=weights(cfg.weights_bits, cfg.options["group_size"]), ignore=["lm_head"])]


def quantize(*args) -> None:
    from services.quantizer.oneshot import quantizer
    quantizer(recipe)(*args)


register_ptq_method(PtqMethod(
    "gptq", "llm-compressor", (4, 8), 16, {"gptq": quant_method("GPTQ")}, GptqOptions,
    calibrated=frozenset({"gptq"}), study_tag=True,
    summary="GPTQ: int4/int8 symmetric grouped weights with second-order error compensation, 16-bit activations",
    quantize=quantize, output_format="compressed-tensors", order=0))
