"""The quantization methods this service runs: one checked registry, torch-free (the flows and the
servicer import it). Each method names its backend, the bits it supports, the spec options it
accepts, and the study's QuantMethod (for the model-name tag) per algorithm.

Two naming generations live side by side: the study's vocabulary (``gptq``, ``awq``, ``hqq``,
``quarot``, ``smoothquant``; ``adaround``, ``brecq`` refused with the alternatives) gets the study's
parametric tag (``GPTQ_w4_g64_headbf16``, ``services.common.naming.tag_quant``); ftlab's first
methods (``bnb_int8``, ``bnb_4bit``, ``smoothquant_w8a8``, ``w4a16``) keep their literal tags
(``Int8_BnB``, ``W4A16_GPTQ``), so existing model names stay valid."""
from __future__ import annotations

from dataclasses import dataclass, field

from services.common.naming import QuantMethod


@dataclass(frozen=True)
class MethodDef:
    name: str
    backend: str                              # "bitsandbytes" | "llm-compressor" | "hqq" | "" (unavailable)
    weights_bits: tuple[int, ...]             # supported; the first is the default
    activations_bits: int                     # what the matmuls see (16 = weight-only)
    options: frozenset[str]                   # QuantizeSpec fields that apply to this method
    quant_methods: dict[str, QuantMethod]     # algorithm -> the study's QuantMethod; first = default
    calibrated: frozenset[str] = frozenset()  # algorithms that need calibration samples (SmoothQuant, GPTQ)
    defaults: dict[str, object] = field(default_factory=dict)
    summary: str = ""
    study_tag: bool = False                   # named with the study's parametric tag (else the literal one)
    needs_gpu: str = ""                       # why it cannot run on a CPU-only service ("" = runs on CPU)
    unavailable: str = ""                     # why no maintained library runs it (FAILED_PRECONDITION)

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self.quant_methods)

    @property
    def default_quant(self) -> QuantMethod:
        return next(iter(self.quant_methods.values()))


_NO_ROUNDING_LIB = ("no maintained library implements it for causal language models on CPU and GPU "
                    "(see docs/QUANTIZER.md); use gptq (error-compensating rounding, the closest), awq or hqq")

REGISTRY: dict[str, MethodDef] = {m.name: m for m in (
    # --- the study's vocabulary
    MethodDef(
        "gptq", "llm-compressor", (4, 8), 16, frozenset({"group_size"}), {"gptq": QuantMethod.GPTQ},
        calibrated=frozenset({"gptq"}), defaults={"group_size": 64}, study_tag=True,
        summary="GPTQ: int4/int8 symmetric grouped weights with second-order error compensation, 16-bit activations"),
    MethodDef(
        "awq", "llm-compressor", (4, 8), 16, frozenset({"group_size"}), {"awq": QuantMethod.AWQ},
        calibrated=frozenset({"awq"}), defaults={"group_size": 64}, study_tag=True,
        summary="AWQ: activation-aware channel scales searched on calibration data, then int4/int8 asymmetric "
                "grouped weights (round to nearest)"),
    MethodDef(
        "hqq", "hqq", (4, 8, 2, 3), 16, frozenset({"group_size"}), {"hqq": QuantMethod.HQQ},
        defaults={"group_size": 64}, study_tag=True,
        needs_gpu="transformers' HQQ integration refuses CPU device maps (quantizer_hqq.validate_environment)",
        summary="HQQ: calibration-free half-quadratic quantization of grouped weights (transformers HqqConfig + hqq)"),
    MethodDef(
        "quarot", "llm-compressor", (4, 8), 16, frozenset({"group_size"}), {"gptq": QuantMethod.QUA_ROT},
        calibrated=frozenset({"gptq"}), defaults={"group_size": 64}, study_tag=True,
        summary="QuaRot-style: Hadamard rotations of the residual stream and the attention heads (SpinQuant R1+R2, "
                "fused into the weights) before GPTQ int4/int8 grouped weights"),
    MethodDef(
        "smoothquant", "llm-compressor", (8,), 8, frozenset({"algorithm", "smoothing_strength"}),
        {"gptq": QuantMethod.SMOOTH_QUANT, "rtn": QuantMethod.SMOOTH_QUANT}, calibrated=frozenset({"gptq", "rtn"}),
        defaults={"algorithm": "gptq", "smoothing_strength": 0.8}, study_tag=True,
        summary="SmoothQuant: activation outliers migrated into the weights, then int8 per-channel weights by GPTQ "
                "or round-to-nearest and int8 dynamic per-token activations"),
    MethodDef("adaround", "", (4, 8), 16, frozenset(), {"adaround": QuantMethod.ADA_ROUND}, study_tag=True,
              unavailable="AdaRound: " + _NO_ROUNDING_LIB, summary="AdaRound (learned rounding): not available"),
    MethodDef("brecq", "", (4, 8), 16, frozenset(), {"brecq": QuantMethod.BRECQ}, study_tag=True,
              unavailable="BRECQ: " + _NO_ROUNDING_LIB, summary="BRECQ (block reconstruction): not available"),
    # --- ftlab's first methods (literal tags)
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
        summary="SmoothQuant W8A8 under its first ftlab name (same recipe as smoothquant)"),
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
ALGORITHMS = ("gptq", "rtn")
