"""The quantization methods this service runs: one checked registry, torch-free (the flows and the
servicer import it). Each method names its backend, the bits it supports, the spec options it
accepts, and the study's QuantMethod (for the model-name tag) per algorithm."""
from __future__ import annotations

from dataclasses import dataclass, field

from services.common.naming import QuantMethod


@dataclass(frozen=True)
class MethodDef:
    name: str
    backend: str                              # "bitsandbytes" | "llm-compressor"
    weights_bits: tuple[int, ...]             # supported; the first is the default
    activations_bits: int                     # what the matmuls see (16 = weight-only)
    options: frozenset[str]                   # QuantizeSpec fields that apply to this method
    quant_methods: dict[str, QuantMethod]     # algorithm -> the study's QuantMethod; first = default
    calibrated: frozenset[str] = frozenset()  # algorithms that need calibration samples (SmoothQuant, GPTQ)
    defaults: dict[str, object] = field(default_factory=dict)
    summary: str = ""

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self.quant_methods)

    @property
    def default_quant(self) -> QuantMethod:
        return next(iter(self.quant_methods.values()))


REGISTRY: dict[str, MethodDef] = {m.name: m for m in (
    MethodDef(
        "bnb_int8", "bitsandbytes", (8,), 8, frozenset({"llm_int8_threshold"}),
        {"llm_int8": QuantMethod.INT8}, defaults={"llm_int8_threshold": 6.0},
        summary="LLM.int8(): int8 weights and vector-wise int8 matmuls, outlier columns kept in 16-bit"),
    MethodDef(
        "bnb_4bit", "bitsandbytes", (4,), 16, frozenset({"bnb_4bit_quant_type", "double_quant", "compute_dtype"}),
        {"nf4": QuantMethod.BNB4BIT, "fp4": QuantMethod.BNB4BIT_FP4},
        defaults={"bnb_4bit_quant_type": "nf4", "double_quant": True, "compute_dtype": "auto"},
        summary="4-bit NF4 or FP4 weights (blocks of 64), optional double quantization"),
    MethodDef(
        "smoothquant_w8a8", "llm-compressor", (8,), 8, frozenset({"algorithm", "smoothing_strength"}),
        {"gptq": QuantMethod.W8A8_SQ_GPTQ, "rtn": QuantMethod.W8A8_SQ_RTN}, calibrated=frozenset({"gptq", "rtn"}),
        defaults={"algorithm": "gptq", "smoothing_strength": 0.8},
        summary="SmoothQuant (activation outliers moved into weights) then int8 per-channel weights "
                "by GPTQ or round-to-nearest, int8 dynamic per-token activations"),
    MethodDef(
        "w4a16", "llm-compressor", (4,), 16, frozenset({"algorithm", "group_size"}),
        {"gptq": QuantMethod.W4A16_GPTQ, "rtn": QuantMethod.W4A16_RTN}, calibrated=frozenset({"gptq"}),
        defaults={"algorithm": "gptq", "group_size": 128},
        summary="int4 symmetric grouped weights by GPTQ or round-to-nearest, 16-bit activations"),
)}

# The shape the flows use: method name -> the study's QuantMethod of its default variant.
METHODS: dict[str, QuantMethod] = {name: m.default_quant for name, m in REGISTRY.items()}

# Every option a method may accept (a set one that the method does not accept is an error).
METHOD_OPTIONS = frozenset().union(*(m.options for m in REGISTRY.values())) | {"weights_bits"}
COMPUTE_DTYPES = ("auto", "bfloat16", "float16", "float32")

