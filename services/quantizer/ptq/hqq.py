"""HQQ: calibration-free half-quadratic quantization of grouped weights (transformers' HqqConfig +
hqq), quantized while loading. CUDA only: transformers' HQQ integration refuses CPU device maps."""
from __future__ import annotations

from dataclasses import dataclass

from services.common.contract.naming import quant_method
from services.quantizer.ptq import PtqMethod, group_size, register_ptq_method


@dataclass(frozen=True)
class HqqOptions:
    group_size: int = group_size(64)


def quantize(ctx, cfg, src_dir, out, tok, calib, dev, dtype) -> None:
    from transformers import AutoModelForCausalLM, HqqConfig
    hqq = HqqConfig(nbits=cfg.weights_bits, group_size=cfg.options["group_size"], skip_modules=["lm_head"])
    AutoModelForCausalLM.from_pretrained(src_dir, quantization_config=hqq, dtype=dtype,
                                         device_map={"": dev.index or 0}).save_pretrained(out)


register_ptq_method(PtqMethod(
    "hqq", "hqq", (4, 8, 2, 3), 16, {"hqq": quant_method("HQQ")}, HqqOptions, study_tag=True,
    needs_gpu="transformers' HQQ integration refuses CPU device maps (quantizer_hqq.validate_environment)",
    summary="HQQ: calibration-free half-quadratic quantization of grouped weights (transformers HqqConfig + hqq)",
    quantize=quantize, output_format="hqq", vllm_loads=False, order=2))
