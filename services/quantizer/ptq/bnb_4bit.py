"""bitsandbytes 4-bit: NF4 or FP4 weights in blocks of 64, optional double quantization;
quantized while loading, lm_head left in full precision."""
from __future__ import annotations

from dataclasses import dataclass

from services.common.contract.naming import quant_method
from services.quantizer.ptq import (PtqMethod, bnb_4bit_quant_type, compute_dtype, double_quant,
                                    register_ptq_method)


@dataclass(frozen=True)
class Bnb4bitOptions:
    bnb_4bit_quant_type: str = bnb_4bit_quant_type("nf4")
    double_quant: bool = double_quant(True)
    compute_dtype: str = compute_dtype("auto")


def quantize(ctx, cfg, src_dir, out, tok, calib, dev, dtype) -> None:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    o = cfg.options
    compute = dtype if o["compute_dtype"] == "auto" else getattr(torch, o["compute_dtype"])
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=o["bnb_4bit_quant_type"],
                             bnb_4bit_use_double_quant=o["double_quant"], bnb_4bit_compute_dtype=compute)
    AutoModelForCausalLM.from_pretrained(
        src_dir, quantization_config=bnb, dtype=dtype,
        device_map={"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}).save_pretrained(out)


register_ptq_method(PtqMethod(
    "bnb_4bit", "bitsandbytes", (4,), 16, {"nf4": quant_method("BNB4BIT", tag="4bit_BnB"),
                                          "fp4": quant_method("BNB4BIT_FP4", tag="4bit_FP4_BnB")},
    Bnb4bitOptions, summary="4-bit NF4 or FP4 weights (blocks of 64), optional double quantization",
    quantize=quantize, output_format="bitsandbytes", variant=lambda o: "" if o["double_quant"] else "noDQ",
    algorithm_of=lambda o: o["bnb_4bit_quant_type"], vllm_loads=False, order=8))
