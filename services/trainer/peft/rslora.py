"""rsLoRA (Kalajdzievski 2023): LoRA scaled by alpha / sqrt(r) instead of alpha / r, so a high rank
keeps learning (the update no longer shrinks as 1/r). LoRA's options, formula and adapter format:
consumers load it as any LoRA adapter (peft's ``use_rslora`` is in its adapter_config.json)."""
from __future__ import annotations

from services.trainer.peft import PeftMethod, register_peft_method
from services.trainer.peft.lora import LoraOptions, lora_config, lora_params

register_peft_method(PeftMethod(
    "rslora", "RsLoRa", "rsLoRA: LoRA scaled by alpha/sqrt(r) (rank-stabilised)", LoraOptions,
    build=lambda a, targets, seed: lora_config(a, targets, use_rslora=True), trainable=lora_params))
