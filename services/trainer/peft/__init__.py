"""The PEFT methods the trainer runs, one plugin module per method in this package (as peft's
own ``register_peft_method``): ``lora.py``, ``dora.py``, ``vera.py``, ``full.py`` (``none``)...
Each module calls :func:`register_peft_method` once with a :class:`PeftMethod`: its name (the
spec's ``peft_method``), the study's name tag (``LoRa256``, ``NoPeft``), its typed options
dataclass (the spec's ``lora`` block; every field declared with
:func:`services.common.contract.params.option`, so its default, range and help live there only), the peft
config builder, the trainable-parameter formula the memory estimate reads and, where the method
needs them, hooks for the optimizer, the adapter's save and the spec's problems. The mechanism
modules (config, memory, loop, the CLI, the dry run) loop over :data:`PEFT_METHODS` and never name a
method, so a new method is one file here (plus its test). Torch-free: peft is imported inside the
hooks only (the door and the flows import this package)."""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

from services.common.contract.params import Param, option, params_of
from services.common.contract.plugins import load_group

# A decoder layer's linear modules -> (in_features, out_features), the estimator's model view.
Shapes = dict[str, tuple[int, int]]
# The study's adapter targets (present in Llama, Qwen, Mistral...).
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
SPEC_BLOCK = "lora"  # the TrainSpec sub-message every adapter's options are read from


@dataclass(frozen=True)
class AdapterOptions:
    """The fields every adapter takes; a method's options subclass this and add its own."""
    r: int = option(8, "adapter rank", lo=1, hi=4096, flag="--r")
    dropout: float = option(0.05, "dropout on the adapter's input", lo=0, hi=1, hi_open=True, flag="--dropout")
    target_modules: list[str] = option(DEFAULT_TARGETS, "comma-separated module names, or all-linear", kind=list,
                                       flag="--target-modules")

    def filled(self) -> "AdapterOptions":
        """The options with their derived defaults filled in (LoRA's alpha = 2 x r)."""
        return self

    def to_dict(self) -> dict[str, Any]:
        """The spec's ``lora`` block (None fields left out, as the run key has always had it)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class PeftMethod:
    name: str                                  # the spec's peft_method ("lora")
    tag: str                                   # the study's name fragment before the rank ("LoRa")
    summary: str                               # one line for the CLI's help and the docs
    options: type[AdapterOptions] | None = None  # None: no adapter, full fine-tuning
    # (options, target modules on the model, seed) -> a peft config
    build: Callable[[Any, Any, int], Any] | None = None
    # (shapes, targets present, layers, options) -> (trainable params, frozen extra fp32 params)
    trainable: Callable[[Shapes, list[str], int, Any], tuple[float, float]] | None = None
    # (peft model, transformers TrainingArguments, options) -> a torch optimizer (None: the Trainer's own)
    optimizer: Callable[[Any, Any, Any], Any] | None = None
    # (peft model, options, work folder) -> None: called once the adapter is on the model
    prepared: Callable[[Any, Any, Any], None] | None = None
    # (peft model, adapter folder, work folder) -> None: writes the adapter (None: save_pretrained)
    save_adapter: Callable[[Any, Any, Any], None] | None = None
    # (resolved TrainConfig) -> settings this method cannot train with (training_quant, world_size):
    # INVALID_ARGUMENT at TrainSpec validation, so the dry run, the flow, the CLI and the door all refuse them
    spec_problems: Callable[[Any], list[str]] | None = None
    order: int = 100                           # position in listings (the study's four first)

    @property
    def full(self) -> bool:
        """Full fine-tuning: no adapter, every weight trains."""
        return self.options is None

    @property
    def fields(self) -> tuple[str, ...]:
        """The ``lora.*`` fields this method takes."""
        return tuple(f.name for f in fields(self.options)) if self.options else ()

    def params(self) -> tuple[Param, ...]:
        return params_of(self.options, SPEC_BLOCK + ".") if self.options else ()


PEFT_METHODS: dict[str, PeftMethod] = {}


def register_peft_method(method: PeftMethod) -> PeftMethod:
    """Add a method to the registry (names and tags are unique; a field two methods share must be
    declared once, in a common options class)."""
    if method.name in PEFT_METHODS:
        raise ValueError(f"PEFT method {method.name!r} is already registered")
    if any(m.tag == method.tag for m in PEFT_METHODS.values()):
        raise ValueError(f"PEFT name tag {method.tag!r} is already used")
    if method.options is not None and not (method.build and method.trainable):
        raise ValueError(f"PEFT method {method.name!r}: an adapter needs a build and a trainable hook")
    known = {p.name: p for m in PEFT_METHODS.values() for p in m.params()}
    for p in method.params():
        if p.name in known and known[p.name] != p:
            raise ValueError(f"PEFT method {method.name!r} declares {p.name} again, differently: "
                             "share the field through a common options class")
    PEFT_METHODS[method.name] = method
    items = sorted(PEFT_METHODS.values(), key=lambda m: (m.order, m.name))
    PEFT_METHODS.clear()
    PEFT_METHODS.update((m.name, m) for m in items)
    return method


def adapter_params() -> tuple[Param, ...]:
    """Every ``lora.*`` field of every registered method, once each (the CLI's flags, the proto)."""
    out: dict[str, Param] = {}
    for m in PEFT_METHODS.values():
        for p in m.params():
            out.setdefault(p.name, p)
    return tuple(out.values())


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
# A third party's methods: each module named under the ``ftlab.peft`` entry-point group of an installed
# distribution (``[project.entry-points."ftlab.peft"] acme = "acme_ftlab.peft_method"``, or ``…:ATTR``)
# registers itself the same way, after ours (tests/unit/test_third_party_plugins.py).
load_group("ftlab.peft")
