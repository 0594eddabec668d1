"""W4A16 (llm-compressor): int4 symmetric grouped weights by GPTQ or round to nearest, 16-bit
activations (ftlab's first name: literal tags ``W4A16_GPTQ`` / ``W4A16_RTN``)."""
from __future__ import annotations

from dataclasses import dataclass

from services.common.contract.naming import quant_method
from services.quantizer.ptq import PtqMethod, algorithm, group_size, register_ptq_method


@dataclass(frozen=True)
class W4a16Options:
    algorithm: str = algorithm("gptq")
    group_size: int = group_size(128)


def recipe(cfg) -> list:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    from services.quantizer.oneshot import weights
    quantizer = GPTQModifier if cfg.algorithm == "gptq" else QuantizationModifier
    return [quantizer(config_groups=weights(cfg.weights_bits, cfg.options["group_size"]), ignore=["lm_head"])]


def quantize(*args) -> None:
    from services.quantizer.oneshot import quantizer
    quantizer(recipe)(*args)


register_ptq_method(PtqMethod(
    "w4a16", "llm-compressor", (4,), 16, {"gptq": quant_method("W4A16_GPTQ", tag="W4A16_GPTQ"),
                                       "rtn": quant_method("W4A16_RTN", tag="W4A16_RTN")},
    W4a16Options, calibrated=frozenset({"gptq"}),
    summary="int4 symmetric grouped weights by GPTQ or round-to-nearest, 16-bit activations",
    quantize=quantize, output_format="compressed-tensors",
    variant=lambda o: f"g{o['group_size']}" if o["group_size"] != W4a16Options.group_size else "", order=10))
