"""QuaRot-style (llm-compressor): Hadamard rotations of the residual stream and the attention
heads (SpinQuant R1+R2, fused into the weights) before GPTQ int4/int8 grouped weights. The
rotations change every weight's basis, so the report compares outputs, not per-layer weights."""
from __future__ import annotations

from dataclasses import dataclass

from services.common.contract.naming import quant_method
from services.quantizer.ptq import PtqMethod, group_size, register_ptq_method


@dataclass(frozen=True)
class QuarotOptions:
    group_size: int = group_size(64)


def recipe(cfg) -> list:
    from llmcompressor.modifiers.quantization import GPTQModifier
    from llmcompressor.modifiers.transform import SpinQuantModifier

    from services.quantizer.oneshot import weights
    return [SpinQuantModifier(rotations=["R1", "R2"], transform_type="random-hadamard"),
            GPTQModifier(config_groups=weights(cfg.weights_bits, cfg.options["group_size"]), ignore=["lm_head"])]


def quantize(*args) -> None:
    from services.quantizer.oneshot import quantizer
    quantizer(recipe)(*args)


register_ptq_method(PtqMethod(
    "quarot", "llm-compressor", (4, 8), 16, {"gptq": quant_method("QuaRot")}, QuarotOptions,
    calibrated=frozenset({"gptq"}), study_tag=True,
    summary="QuaRot-style: Hadamard rotations of the residual stream and the attention heads (SpinQuant R1+R2, "
            "fused into the weights) before GPTQ int4/int8 grouped weights",
    quantize=quantize, output_format="compressed-tensors", compares_weights=False, order=3))
