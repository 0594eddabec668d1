"""The post-training quantization methods, one plugin module per method in this package (as the
PEFT methods, services/trainer/peft/): each module calls :func:`register_ptq_method` once with a
:class:`PtqMethod`: its name (the spec's ``method``), backend, supported weight bits, the study's
QuantMethod per algorithm (the model-name tag, declared in the plugin with
:func:`~services.common.contract.naming.quant_method`: name, literal tag, aliases), its typed
options dataclass (the QuantizeSpec fields it takes, with its own defaults: the range, choices and
help of each shared field are the declarations below, so they live once), its quantize function,
its output format and what loads it. The mechanism modules (config, recipe, the CLI, the flows) loop over :data:`PTQ_METHODS` and
never name a method, so a new method is one file here (plus its test).

Two naming generations live side by side: the study's vocabulary (``gptq``, ``awq``, ``hqq``,
``quarot``, ``smoothquant``; ``adaround``, ``brecq`` refused with the alternatives) gets the study's
parametric tag (``GPTQ_w4_g64_headbf16``); ftlab's first methods (``bnb_int8``, ``bnb_4bit``,
``smoothquant_w8a8``, ``w4a16``) keep their literal tags (``Int8_BnB``, ``W4A16_GPTQ``) plus a
variant suffix for options that change the weights, so existing model names stay valid.
Torch-free: the quantize hooks import their libraries when called (the door imports this)."""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, fields
from typing import Any, Callable

from services.common.contract.naming import QuantMethod
from services.common.contract.params import Param, option, params_of
from services.common.contract.plugins import load_group

COMPUTE_DTYPES = ("auto", "bfloat16", "float16", "float32")
ALGORITHMS = ("gptq", "rtn")


# --- the QuantizeSpec's method options: range, choices and help once; each method its default

def llm_int8_threshold(default: float = 6.0) -> Any:
    return option(default, "LLM.int8 outlier threshold", lo=0.0, hi=1e4)


def bnb_4bit_quant_type(default: str = "nf4") -> Any:
    return option(default, "4-bit data type", choices=("nf4", "fp4"))


def double_quant(default: bool = True) -> Any:
    return option(default, "quantize the quantization constants too")


def compute_dtype(default: str = "auto") -> Any:
    return option(default, "matmul dtype, auto: bf16 on GPU, fp32 on CPU", choices=COMPUTE_DTYPES)


def algorithm(default: str = "gptq") -> Any:
    return option(default, "weight rounding", choices=ALGORITHMS)


def smoothing_strength(default: float = 0.8) -> Any:
    return option(default, "SmoothQuant alpha", lo=0.0, hi=1.0)


def group_size(default: int) -> Any:
    return option(default, "weights per scale", lo=1, hi=65_536)


@dataclass(frozen=True)
class NoOptions:
    """A method without options of its own."""


# (ctx, cfg, source folder, output folder, tokenizer, calibration texts, torch device, dtype) -> None
Quantize = Callable[[Any, Any, Any, Any, Any, list, Any, Any], None]


@dataclass(frozen=True)
class PtqMethod:
    name: str
    backend: str                              # the library that quantizes ("" = unavailable)
    weights_bits: tuple[int, ...]             # supported; the first is the default
    activations_bits: int                     # what the matmuls see (16 = weight-only)
    quant_methods: dict[str, QuantMethod]     # algorithm -> the study's QuantMethod; first = default
    options_cls: type = NoOptions             # its QuantizeSpec options, with their defaults
    calibrated: frozenset[str] = frozenset()  # algorithms that need calibration samples
    summary: str = ""
    study_tag: bool = False                   # named with the study's parametric tag (else the literal one)
    needs_gpu: str = ""                       # why it cannot run on a CPU-only service ("" = runs on CPU)
    unavailable: str = ""                     # why no maintained library runs it (FAILED_PRECONDITION)
    quantize: Quantize | None = None          # writes a folder plain from_pretrained loads
    output_format: str = ""                   # "bitsandbytes" | "hqq" | "compressed-tensors"
    # (options) -> the literal tag's suffix for options that change the weights ("" = the bare tag)
    variant: Callable[[dict[str, Any]], str] | None = None
    # (options) -> the algorithm (the quant_methods key) they select; None: the option "algorithm" or the only one
    algorithm_of: Callable[[dict[str, Any]], str] | None = None
    compares_weights: bool = True             # per-layer weight errors mean something (rotations: no)
    vllm_loads: bool = True                   # vLLM can serve its output format
    order: int = 100

    @property
    def options(self) -> frozenset[str]:
        """The QuantizeSpec fields (besides weights_bits) this method takes."""
        return frozenset(f.name for f in fields(self.options_cls))

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in params_of(self.options_cls)}

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self.quant_methods)

    @property
    def default_quant(self) -> QuantMethod:
        return next(iter(self.quant_methods.values()))

    def algorithm(self, opts: dict[str, Any]) -> str:
        if self.algorithm_of:
            return self.algorithm_of(opts)
        return opts["algorithm"] if "algorithm" in self.options else self.algorithms[0]


PTQ_METHODS: dict[str, PtqMethod] = {}


def register_ptq_method(method: PtqMethod) -> PtqMethod:
    """Add a method (unique names; a shared option declared with the shared declaration above)."""
    if method.name in PTQ_METHODS:
        raise ValueError(f"PTQ method {method.name!r} is already registered")
    if not method.unavailable and method.quantize is None:
        raise ValueError(f"PTQ method {method.name!r} has no quantize function")
    known = {p.name: p for m in PTQ_METHODS.values() for p in params_of(m.options_cls)}
    for p in params_of(method.options_cls):
        other = known.get(p.name)
        if other is not None and (other.kind, other.lo, other.hi, other.choices, other.help) != \
                (p.kind, p.lo, p.hi, p.choices, p.help):
            raise ValueError(f"PTQ method {method.name!r} declares {p.name} differently: use the shared declaration")
    PTQ_METHODS[method.name] = method
    items = sorted(PTQ_METHODS.values(), key=lambda m: (m.order, m.name))
    PTQ_METHODS.clear()
    PTQ_METHODS.update((m.name, m) for m in items)
    return method


def option_params() -> tuple[Param, ...]:
    """Every method option, once (the CLI's flags, the proto): its default None (each method's
    own; the help lists them), its range, choices and help from the shared declaration."""
    out: dict[str, Param] = {}
    for m in PTQ_METHODS.values():
        for p in params_of(m.options_cls):
            out.setdefault(p.name, p)
    return tuple(Param(p.name, None, f"{p.help} ({method_defaults(p.name)})", p.kind, p.lo, p.hi,
                       p.lo_open, p.hi_open, p.choices) for p in out.values())


def method_defaults(field: str) -> str:
    """The methods' defaults of an option, for help texts: ``default: 64 for gptq, awq;
    128 for w4a16`` (``weights_bits``: each method's first supported)."""
    by_value: dict[str, list[str]] = {}
    for m in PTQ_METHODS.values():
        if field == "weights_bits" or field in m.options:
            value = m.weights_bits[0] if field == "weights_bits" else m.defaults[field]
            text = str(value).lower() if isinstance(value, bool) else str(value)
            by_value.setdefault(text, []).append(m.name)
    return "default: " + "; ".join(f"{v} for {', '.join(names)}" for v, names in by_value.items())


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
# A third party's methods: each module named under the ``ftlab.ptq`` entry-point group of an installed
# distribution (``[project.entry-points."ftlab.ptq"] acme = "acme_ftlab.ptq_method"``, or ``…:ATTR``)
# registers itself the same way, after ours (tests/unit/test_third_party_plugins.py).
load_group("ftlab.ptq")
