"""VeRA (Kopiczko et al. 2024): frozen shared random projections, trained scaling vectors d and b."""
from __future__ import annotations

from dataclasses import dataclass

from services.common.contract.params import option
from services.trainer.peft import AdapterOptions, PeftMethod, Shapes, register_peft_method


@dataclass(frozen=True)
class VeraOptions(AdapterOptions):
    d_initial: float = option(0.1, "VeRA: initial value of the scaling vector d", lo=0, hi=10, lo_open=True,
                              flag="--d-initial")


def build(a: VeraOptions, targets, seed: int):
    from peft import VeraConfig
    # The shared random projections are seeded by the run's seed and saved with the adapter.
    return VeraConfig(r=a.r, target_modules=targets, vera_dropout=a.dropout, d_initial=a.d_initial,
                      projection_prng_key=seed, save_projection=True, task_type="CAUSAL_LM")


def vera_params(shapes: Shapes, targets: list[str], layers: int, a: VeraOptions) -> tuple[float, float]:
    """Trained d (r) and b (out) vectors per target and layer; frozen shared A (r x max in) and
    B (max out x r) projections."""
    trainable = layers * sum(a.r + shapes[t][1] for t in targets)
    frozen = a.r * (max(shapes[t][0] for t in targets) + max(shapes[t][1] for t in targets))
    return trainable, frozen


register_peft_method(PeftMethod(
    "vera", "VeRa", "VeRA: frozen shared random projections, trained scaling vectors d and b", VeraOptions,
    build=build, trainable=vera_params, order=2))
