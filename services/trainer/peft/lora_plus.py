"""LoRA+ (Hayou et al. 2024): LoRA whose B matrices learn ``loraplus_lr_ratio`` times faster than
A (two optimizer parameter groups, peft's ``create_loraplus_optimizer``). The adapter is a plain
LoRA adapter; only the optimizer differs."""
from __future__ import annotations

from dataclasses import dataclass

from services.common.contract.params import option
from services.trainer.peft import PeftMethod, register_peft_method
from services.trainer.peft.lora import LoraOptions, lora_config, lora_params


@dataclass(frozen=True)
class LoraPlusOptions(LoraOptions):
    loraplus_lr_ratio: float = option(16.0, "LoRA+: learning rate of B over A's (the paper: 2^4)", lo=1, hi=1e4,
                                      flag="--loraplus-lr-ratio")


def optimizer(model, args, a: LoraPlusOptions):
    """The Trainer's own optimizer class and settings, with B's parameters in a group at
    ``learning_rate * loraplus_lr_ratio`` (the Trainer's scheduler scales every group alike)."""
    from peft.optimizers import create_loraplus_optimizer
    from transformers import Trainer
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    lr = kwargs.pop("lr", args.learning_rate)
    return create_loraplus_optimizer(model, cls, lr=lr, loraplus_lr_ratio=a.loraplus_lr_ratio,
                                     loraplus_weight_decay=args.weight_decay, **kwargs)


register_peft_method(PeftMethod(
    "lora_plus", "LoRaPlus", "LoRA+: LoRA with B's learning rate loraplus_lr_ratio x A's", LoraPlusOptions,
    build=lambda a, targets, seed: lora_config(a, targets), trainable=lora_params, optimizer=optimizer))
