"""KV-cache precision at evaluation (the study's ``--kv-cache-dtype``): a quantized cache through
transformers' ``QuantizedCache`` backends, both of which run on CPU and GPU — optimum-quanto for 4
and 2 bits (its only widths), HQQ for 8 bits. Torch-free (the door imports it).

The cache keeps the most recent ``residual_length`` tokens (transformers' default, 128) in full
precision and quantizes older ones per channel, so short generations quantize only long prompts."""
from __future__ import annotations

from typing import Any

from services.common.contract.naming import with_kv_bits

# name -> (QuantizedCache backend, bits); "auto": the model's own dtype (transformers' DynamicCache).
KV_CACHE_DTYPES: dict[str, tuple[str, int] | None] = {
    "auto": None, "int8": ("hqq", 8), "int4": ("quanto", 4), "int2": ("quanto", 2)}
RESIDUAL_LENGTH = 128


def generate_kwargs(kv_cache_dtype: str) -> dict[str, Any]:
    """Extra ``model.generate`` arguments for this cache precision ({} for auto)."""
    spec = KV_CACHE_DTYPES[kv_cache_dtype]
    if spec is None:
        return {}
    backend, bits = spec
    return {"cache_implementation": "quantized",
            "cache_config": {"backend": backend, "nbits": bits, "residual_length": RESIDUAL_LENGTH}}


def record(kv_cache_dtype: str, model_dtype: str, quantization: dict[str, Any]) -> dict[str, Any]:
    """The evaluation's quantization block with the KV cache it ran with: ``kv_cache_dtype`` (the
    model's dtype for auto, e.g. ``float32``), ``kv_cache_bits``, the backend, and ``quant_tag``
    with the KV bits where the study puts them (``GPTQ_w4_g64_kv4_headbf16``; 8 and 16 bits stay
    out, as in the study). The model's own tag stays in ``model_quant_tag``."""
    spec = KV_CACHE_DTYPES[kv_cache_dtype]
    out = dict(quantization)
    if spec is None:
        bits = {"float32": 32, "bfloat16": 16, "float16": 16}.get(model_dtype)
        return out | {"kv_cache_dtype": model_dtype, "kv_cache_bits": bits, "kv_cache": {"backend": "dynamic"}}
    backend, bits = spec
    tag = quantization.get("quant_tag") or "NoQuant"
    return out | {"kv_cache_dtype": kv_cache_dtype, "kv_cache_bits": bits, "model_quant_tag": tag,
                  "quant_tag": with_kv_bits(tag, bits),
                  "kv_cache": {"backend": backend, "nbits": bits, "residual_length": RESIDUAL_LENGTH,
                               "implementation": "transformers QuantizedCache"}}
