"""LoRA (Hu et al. 2021): a low-rank update B·A on the target modules, scaled by alpha / r."""
from __future__ import annotations

from dataclasses import dataclass, replace

from services.common.contract.params import option
from services.trainer.peft import AdapterOptions, PeftMethod, Shapes, register_peft_method


@dataclass(frozen=True)
class LoraOptions(AdapterOptions):
    alpha: int | None = option(None, "LoRA/DoRA scaling numerator (default: 2 x r)", kind=int, lo=0, hi=2**31 - 1,
                               lo_open=True, flag="--alpha")

    def filled(self) -> "LoraOptions":
        # the study's scaling alpha/r = 2 (an invalid r is reported by the door)
        return self if self.alpha is not None else replace(self, alpha=2 * max(self.r, 1) if isinstance(self.r, int)
                                                           else None)


def lora_config(a: LoraOptions, targets, **extra):
    """peft's LoraConfig for these options; ``extra``: the LoRA variants' switches."""
    from peft import LoraConfig
    return LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=targets,
                      task_type="CAUSAL_LM", **extra)


def lora_params(shapes: Shapes, targets: list[str], layers: int, a: LoraOptions) -> tuple[float, float]:
    """B (out x r) and A (r x in) per target module and layer."""
    return layers * sum(a.r * (shapes[t][0] + shapes[t][1]) for t in targets), 0.0


register_peft_method(PeftMethod(
    "lora", "LoRa", "LoRA: low-rank update B·A on the target modules", LoraOptions,
    build=lambda a, targets, seed: lora_config(a, targets), trainable=lora_params, order=0))
