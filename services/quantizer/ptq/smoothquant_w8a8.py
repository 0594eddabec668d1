"""SmoothQuant W8A8 under its first ftlab name (the same recipe as ``smoothquant``, literal tags
``W8A8_SQ_GPTQ`` / ``W8A8_SQ_RTN``, so models named before the study's vocabulary stay valid)."""
from __future__ import annotations

from services.common.contract.naming import quant_method
from services.quantizer.ptq import PtqMethod, register_ptq_method
from services.quantizer.ptq.smoothquant import SmoothQuantOptions, quantize


def variant(o) -> str:
    default = SmoothQuantOptions.smoothing_strength
    return f"a{o['smoothing_strength']:g}" if o["smoothing_strength"] != default else ""


register_ptq_method(PtqMethod(
    "smoothquant_w8a8", "llm-compressor", (8,), 8,
    {"gptq": quant_method("W8A8_SQ_GPTQ", tag="W8A8_SQ_GPTQ"), "rtn": quant_method("W8A8_SQ_RTN", tag="W8A8_SQ_RTN")},
    SmoothQuantOptions,
    calibrated=frozenset({"gptq", "rtn"}), summary="SmoothQuant W8A8 under its first ftlab name (same recipe as "
    "smoothquant)", quantize=quantize, output_format="compressed-tensors", variant=variant, order=9))
