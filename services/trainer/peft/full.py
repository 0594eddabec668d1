"""Full fine-tuning (``peft_method: none``, name fragment ``NoPeft``): no adapter, every weight
trains (the estimate counts every weight; FSDP shards them on several GPUs)."""
from __future__ import annotations

from services.trainer.peft import PeftMethod, register_peft_method


def _spec_problems(cfg) -> list[str]:
    if cfg.training_quant == "none":
        return []
    return [f"peft_method 'none' with training_quant {cfg.training_quant!r}: full fine-tuning cannot update "
            "bitsandbytes-quantized weights (they are frozen integer blocks); train an adapter on the quantized "
            "base, or use training_quant 'none'"]


register_peft_method(PeftMethod(
    "none", "NoPeft", "full fine-tuning: every weight trains (name fragment NoPeft)",
    spec_problems=_spec_problems, order=3))
