"""SmoothQuant (llm-compressor): activation outliers migrated into the weights, then int8
per-channel weights by GPTQ or round to nearest and int8 dynamic per-token activations."""
from __future__ import annotations

from dataclasses import dataclass

from services.common.contract.naming import quant_method
from services.quantizer.ptq import PtqMethod, algorithm, register_ptq_method, smoothing_strength


@dataclass(frozen=True)
class SmoothQuantOptions:
    algorithm: str = algorithm("gptq")
    smoothing_strength: float = smoothing_strength(0.8)


def recipe(cfg) -> list:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform import SmoothQuantModifier
    quantizer = GPTQModifier if cfg.algorithm == "gptq" else QuantizationModifier
    return [SmoothQuantModifier(smoothing_strength=cfg.options["smoothing_strength"]),
            quantizer(targets="Linear", scheme="W8A8", ignore=["lm_head"])]


def quantize(*args) -> None:
    from services.quantizer.oneshot import quantizer
    quantizer(recipe)(*args)


register_ptq_method(PtqMethod(
    "smoothquant", "llm-compressor", (8,), 8, {"gptq": quant_method("SmoothQuant"), "rtn": quant_method("SmoothQuant")},
    SmoothQuantOptions, calibrated=frozenset({"gptq", "rtn"}), study_tag=True,
    summary="SmoothQuant: activation outliers migrated into the weights, then int8 per-channel weights by GPTQ "
            "or round-to-nearest and int8 dynamic per-token activations",
    quantize=quantize, output_format="compressed-tensors", order=4))
