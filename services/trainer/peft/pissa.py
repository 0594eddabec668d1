"""PiSSA (Meng et al. 2024): LoRA initialised from the principal singular vectors of each target
weight (A, B = its top-r SVD factors; the base keeps the residual). Trained that way the adapter
only fits the residual base, so at save it is converted (peft's
``path_initial_model_for_weight_conversion``) into a standard LoRA adapter of rank 2r for the
ORIGINAL base: every consumer of an adapter-only model (the evaluator, the quantizer's merge)
applies it to the unchanged base and gets the trained function."""
from __future__ import annotations

from pathlib import Path

from services.trainer.peft import PeftMethod, register_peft_method
from services.trainer.peft.lora import LoraOptions, lora_config, lora_params

INITIAL = "pissa_init"  # the adapter as initialised, under the job's work folder (the conversion's reference)


def prepared(model, a: LoraOptions, workdir: Path) -> None:
    """Save the adapter as initialised, marked as a plain LoRA init (peft's recipe), before any step."""
    config = model.peft_config["default"]
    init, config.init_lora_weights = config.init_lora_weights, True
    model.save_pretrained(Path(workdir) / INITIAL)
    config.init_lora_weights = init


def save_adapter(model, adapter_dir: Path, workdir: Path) -> None:
    """The trained adapter converted for the original base (rank 2r)."""
    model.save_pretrained(adapter_dir, path_initial_model_for_weight_conversion=str(Path(workdir) / INITIAL))


def spec_problems(cfg) -> list[str]:
    """PiSSA on a bitsandbytes base cannot start: the SVD needs the float weight it replaces by the
    residual (peft 0.21's ``pissa_init`` raises TypeError on NF4/int8 weights and asks for PiSSA in
    float, then the residual re-quantized: a different model than our QLoRA base); and its save
    converts against the original base, which a quantized base is not."""
    problems = []
    if cfg.training_quant != "none":
        problems.append(f"peft_method 'pissa' with training_quant {cfg.training_quant!r}: PiSSA's SVD initialisation "
                        "needs the base's float weights (peft refuses a 4-bit/8-bit base), and the converted "
                        "adapter would not reproduce a model trained on a quantized residual; use training_quant "
                        "'none', or lora/dora on the quantized base")
    if cfg.world_size > 1:
        problems.append("peft_method 'pissa' with world_size > 1: the initial adapter the conversion needs is saved "
                        "by one process; train PiSSA with world_size 1")
    return problems


register_peft_method(PeftMethod(
    "pissa", "PiSSA", "PiSSA: LoRA initialised from the weights' principal singular vectors (saved converted "
    "to a plain LoRA adapter for the original base)", LoraOptions,
    build=lambda a, targets, seed: lora_config(a, targets, init_lora_weights="pissa"), trainable=lora_params,
    prepared=prepared, save_adapter=save_adapter, spec_problems=spec_problems))
