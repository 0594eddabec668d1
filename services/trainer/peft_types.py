"""The PEFT methods the trainer runs: one registry entry per method, as peft's own
``peft_types.py`` + ``register_peft_method``. Each entry binds the method's name (the spec's
``peft_method``), the study's name tag (``LoRa256``, ``NoPeft``), the adapter fields it takes,
the peft config builder the training loop calls, and the trainable-parameter formula the memory
estimator (services/trainer/memory.py) counts. A new method is one :func:`register_peft_method`
call. Torch-free: peft is imported only inside the builders (the door and the flows import this)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# A decoder layer's linear modules -> (in_features, out_features), the estimator's model view.
Shapes = dict[str, tuple[int, int]]


@dataclass(frozen=True)
class PeftMethod:
    name: str                                  # the spec's peft_method ("lora")
    tag: str                                   # the study's name fragment before the rank ("LoRa")
    summary: str                               # one line for the CLI's help and the docs
    adapter_fields: tuple[str, ...] = ()       # lora.* fields it takes (empty: no adapter, full fine-tuning)
    # (adapter config, target modules on the model, seed) -> a peft config; None: full fine-tuning
    build: Callable[[Any, Any, int], Any] | None = None
    # (shapes, targets present, layers, r) -> (trainable params, frozen extra fp32 params); None: every weight
    trainable: Callable[[Shapes, list[str], int, int], tuple[float, float]] | None = None

    @property
    def full(self) -> bool:
        """Full fine-tuning: no adapter, every weight trains."""
        return self.build is None


PEFT_METHODS: dict[str, PeftMethod] = {}


def register_peft_method(method: PeftMethod) -> PeftMethod:
    """Add a method to the registry (names and tags are unique)."""
    if method.name in PEFT_METHODS:
        raise ValueError(f"PEFT method {method.name!r} is already registered")
    if any(m.tag == method.tag for m in PEFT_METHODS.values()):
        raise ValueError(f"PEFT name tag {method.tag!r} is already used")
    PEFT_METHODS[method.name] = method
    return method


# --- builders (peft imported here only: the registry stays torch-free)

def _lora(use_dora: bool):
    def build(a, targets, seed):
        from peft import LoraConfig
        return LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=targets,
                          use_dora=use_dora, task_type="CAUSAL_LM")
    return build


def _vera(a, targets, seed):
    from peft import VeraConfig
    # The shared random projections are seeded by the run's seed and saved with the adapter.
    return VeraConfig(r=a.r, target_modules=targets, vera_dropout=a.dropout, d_initial=a.d_initial,
                      projection_prng_key=seed, save_projection=True, task_type="CAUSAL_LM")


# --- trainable parameters per method (counts, not bytes; the estimator adds the dtype)

def _lora_params(shapes: Shapes, targets: list[str], layers: int, r: int) -> tuple[float, float]:
    """B (out x r) and A (r x in) per target module and layer (Hu et al. 2021)."""
    return layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets), 0.0


def _dora_params(shapes: Shapes, targets: list[str], layers: int, r: int) -> tuple[float, float]:
    """LoRA plus a magnitude vector per output (Liu et al. 2024)."""
    lora, _ = _lora_params(shapes, targets, layers, r)
    return lora + layers * sum(shapes[t][1] for t in targets), 0.0


def _vera_params(shapes: Shapes, targets: list[str], layers: int, r: int) -> tuple[float, float]:
    """Trained d (r) and b (out) vectors per target and layer; frozen shared A (r x max in) and
    B (max out x r) projections (Kopiczko et al. 2024)."""
    trainable = layers * sum(r + shapes[t][1] for t in targets)
    frozen = r * (max(shapes[t][0] for t in targets) + max(shapes[t][1] for t in targets))
    return trainable, frozen


register_peft_method(PeftMethod(
    "lora", "LoRa", "LoRA: low-rank update B·A on the target modules",
    ("r", "alpha", "dropout", "target_modules"), _lora(False), _lora_params))
register_peft_method(PeftMethod(
    "dora", "DoRa", "DoRA: LoRA plus a learned magnitude per output (weight decomposition)",
    ("r", "alpha", "dropout", "target_modules"), _lora(True), _dora_params))
register_peft_method(PeftMethod(
    "vera", "VeRa", "VeRA: frozen shared random projections, trained scaling vectors d and b",
    ("r", "d_initial", "dropout", "target_modules"), _vera, _vera_params))
register_peft_method(PeftMethod(
    "none", "NoPeft", "full fine-tuning: every weight trains (name fragment NoPeft)"))
