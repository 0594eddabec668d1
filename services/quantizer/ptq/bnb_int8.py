"""LLM.int8() (bitsandbytes): int8 weights and vector-wise int8 matmuls, outlier columns kept in
16-bit; quantized while loading, lm_head left in full precision (bitsandbytes' default)."""
from __future__ import annotations

from dataclasses import dataclass

from services.common.contract.naming import quant_method
from services.quantizer.ptq import PtqMethod, llm_int8_threshold, register_ptq_method


@dataclass(frozen=True)
class Int8Options:
    llm_int8_threshold: float = llm_int8_threshold(6.0)


def quantize(ctx, cfg, src_dir, out, tok, calib, dev, dtype) -> None:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    bnb = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=cfg.options["llm_int8_threshold"])
    AutoModelForCausalLM.from_pretrained(
        src_dir, quantization_config=bnb, dtype=dtype,
        device_map={"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}).save_pretrained(out)


def variant(o) -> str:
    return f"t{o['llm_int8_threshold']:g}" if o["llm_int8_threshold"] != Int8Options.llm_int8_threshold else ""


register_ptq_method(PtqMethod(
    "bnb_int8", "bitsandbytes", (8,), 8, {"llm_int8": quant_method("INT8", tag="Int8_BnB")}, Int8Options,
    summary="LLM.int8(): int8 weights and vector-wise int8 matmuls, outlier columns kept in 16-bit",
    quantize=quantize, output_format="bitsandbytes", variant=variant, vllm_loads=False, order=7))
