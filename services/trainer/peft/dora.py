"""DoRA (Liu et al. 2024): LoRA plus a learned magnitude per output (weight decomposition)."""
from __future__ import annotations

from services.trainer.peft import PeftMethod, Shapes, register_peft_method
from services.trainer.peft.lora import LoraOptions, lora_config, lora_params


def dora_params(shapes: Shapes, targets: list[str], layers: int, a: LoraOptions) -> tuple[float, float]:
    """LoRA's plus a magnitude vector per output."""
    lora, _ = lora_params(shapes, targets, layers, a)
    return lora + layers * sum(shapes[t][1] for t in targets), 0.0


register_peft_method(PeftMethod(
    "dora", "DoRa", "DoRA: LoRA plus a learned magnitude per output (weight decomposition)", LoraOptions,
    build=lambda a, targets, seed: lora_config(a, targets, use_dora=True), trainable=dora_params, order=1))
