"""W8A16 (llm-compressor): int8 symmetric per-channel weights by round to nearest,
16-bit activations; calibration-free, saved as compressed-tensors (vLLM serves it). The extension
example: this file (its name tag declared here too) is all the method took."""
from __future__ import annotations

from services.common.contract.naming import quant_method
from services.quantizer.ptq import PtqMethod, register_ptq_method


def recipe(cfg) -> list:
    from llmcompressor.modifiers.quantization import QuantizationModifier

    from services.quantizer.oneshot import weights
    # per output channel (llm-compressor's W8A16 preset groups by 128, wider than small models' layers)
    return [QuantizationModifier(config_groups=weights(8, 0, strategy="channel"), ignore=["lm_head"])]


def quantize(*args) -> None:
    from services.quantizer.oneshot import quantizer
    quantizer(recipe)(*args)


register_ptq_method(PtqMethod(
    "w8a16", "llm-compressor", (8,), 16, {"rtn": quant_method("W8A16_RTN", tag="W8A16_RTN")},
    summary="int8 per-channel weights by round-to-nearest, 16-bit activations (llm-compressor W8A16)",
    quantize=quantize, output_format="compressed-tensors", order=11))
