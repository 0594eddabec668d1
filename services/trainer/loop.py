"""The training loop: build the model (base, training-time quantization, the PEFT method's
adapter), run transformers' ``Trainer`` on tokenized examples and save to a folder. The job's
child calls :func:`train` in-process (services/trainer/recipe.py), or torchrun's workers each call
it (services/trainer/ddp.py); nothing here fetches or commits, so neither re-enters the other."""
from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from services.common.torch_utils import modeling
from services.common.contract.errors import PreconditionError
from services.trainer import checkpoints, packed_attention
from services.trainer.cpu_bf16 import frozen_linears_to_bf16
from services.trainer.config import OPTIMIZERS, TrainConfig
from services.trainer.peft import DEFAULT_TARGETS



def train(cfg: TrainConfig, base_dir: Path, examples: list[dict], out: Path, resume_dir: Path | None,
          store, report, total_steps: int, dev: torch.device | None = None) -> dict[str, Any]:
    """Build the model, run transformers' Trainer, save to ``out`` (adapter in adapter/, merged
    model at the root). ``report`` has ``progress`` and ``log`` (a JobContext, or the DDP
    workers' stdout relay). Returns what the metadata needs."""
    from transformers import Trainer, TrainingArguments, set_seed

    dev = dev or modeling.device()
    modeling.reset_peak_memory()
    set_seed(cfg.seed)
    tok = modeling.load_tokenizer(base_dir, padding_side="right")
    model = build_model(cfg, base_dir, dev, out.parent)
    packing = packed_attention.packing_mode(model) if cfg.packing else None
    if cfg.packing and packing is None:
        report.log(f"packing off: {model.config._attn_implementation} attention cannot keep packed examples apart; "
                   "padding instead")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    seen = {"tokens": 0, "micro_batch_tokens": 0, "logit_rows": 0, "logit_total": 0, "examples": 0}

    def collate_counting(batch):
        seen["tokens"] += sum(len(b["input_ids"]) for b in batch)
        out_batch = collate(batch, tok.pad_token_id, packing, cfg.max_seq_length,
                            cfg.completion_only_loss and cfg.answer_logits_only)
        seen["micro_batch_tokens"] = max(seen["micro_batch_tokens"], out_batch["input_ids"].numel())
        rows = out_batch["shift_labels"].numel() if "shift_labels" in out_batch else out_batch["input_ids"].numel()
        seen["logit_rows"] = max(seen["logit_rows"], rows)
        seen["logit_total"] += rows  # for MFU (services/common/torch_utils/mfu.py)
        seen["examples"] += len(batch)
        return out_batch

    distributed = cfg.world_size > 1
    args = TrainingArguments(
        output_dir=str(out.parent / "trainer"), max_steps=total_steps,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay, warmup_steps=int(cfg.warmup_ratio * total_steps),
        lr_scheduler_type=cfg.lr_scheduler, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed,
        optim=OPTIMIZERS[cfg.optimizer], logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500,
        save_total_limit=1, report_to=[], disable_tqdm=True, remove_unused_columns=False,
        dataloader_num_workers=0, use_cpu=dev.type == "cpu",
        # bf16 autocast on GPUs; on a CPU, bf16 means bf16 kernels for the frozen layers (an
        # adapter, cpu_bf16.py) or bf16 weights throughout (full fine-tuning) (autocast alone
        # was slower there than fp32, docs/BENCHMARKS.md)
        bf16=dev.type == "cuda" and weights_dtype(cfg, dev) == torch.bfloat16,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        ddp_backend=("gloo" if dev.type == "cpu" else "nccl") if distributed else None,
        ddp_find_unused_parameters=False if distributed else None,
        **fsdp_args(cfg, model, dev))
    # a method's own optimizer (LoRA+'s parameter groups); None: the Trainer builds args.optim's
    optimizer = cfg.method.optimizer(model, args, cfg.adapter) if cfg.method.optimizer else None
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collate_counting,
                      optimizers=(optimizer, None), callbacks=[_Events(report, total_steps, seen), _Checkpoints(store, cfg, dtype_name(cfg, dev))])
    if trainer.is_world_process_zero():
        report.log(f"training {cfg.output_name}: {total_steps} steps, {len(examples)} examples, "
                   f"{trainable:,}/{total:,} trainable parameters on {dev}"
                   + (f" x {cfg.world_size} processes" if distributed else ""))
    t0 = time.time()
    trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
    train_s = time.time() - t0

    tokens = seen["tokens"]
    if distributed:
        t = torch.tensor([tokens], dtype=torch.long, device=args.device)
        torch.distributed.all_reduce(t)
        tokens = int(t.item())
    save_model(trainer, model, tok, cfg, out, base_dir, dev)
    curve = [{"step": h["step"], "loss": float(h["loss"]), "learning_rate": float(h.get("learning_rate", 0.0))}
             for h in trainer.state.log_history if "loss" in h]
    return {"trainable_params": trainable, "total_params": total, "loss_curve": curve, "tokens": tokens,
            "train_s": train_s, "memory": modeling.peak_memory(),
            "micro_batch_tokens": seen["micro_batch_tokens"], "logit_rows": seen["logit_rows"],
            "device": str(dev), "flops": _train_flops(model, cfg, seen, trainable, distributed),
            "dtype": dtype_name(cfg, dev)}


def weights_dtype(cfg: TrainConfig, dev: torch.device) -> torch.dtype:
    """The training dtype (recorded in the metadata; MFU uses its peak): the spec's ``dtype``, or
    for ``auto`` the device's compute dtype (bf16 on GPUs that have it, fp32 on CPU). It is the
    unquantized weights' dtype, except for an adapter on a CPU (``bfloat16``, or ``auto`` where the
    CPU has native bf16: :func:`cpu_bf16_adapter`), where only the frozen linear layers are bf16.
    Quantized bases (QLoRA, int8) keep their own; adapters stay fp32 (peft's
    ``autocast_adapter_dtype``)."""
    if cfg.training_quant != "none":
        return torch.bfloat16 if cfg.training_quant == "qlora" else modeling.compute_dtype(dev)
    if cpu_bf16_adapter(cfg, dev):
        return torch.bfloat16
    if cfg.dtype == "auto":
        return modeling.compute_dtype(dev)
    if cfg.dtype == "bfloat16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PreconditionError(f"dtype 'bfloat16': {torch.cuda.get_device_name(dev)} has no bf16; use auto")
    return getattr(torch, cfg.dtype)


def dtype_name(cfg: TrainConfig, dev: torch.device) -> str:
    """:func:`weights_dtype` as recorded: ``float32`` or ``bfloat16``."""
    return str(weights_dtype(cfg, dev)).removeprefix("torch.")


def _train_flops(model, cfg: TrainConfig, seen: dict, trainable: int, distributed: bool) -> float:
    """Model FLOPs of this process's training (services/common/torch_utils/mfu.py), times the world size."""
    from services.common.torch_utils import mfu
    n = max(seen["examples"], 1)
    flops = mfu.training_flops(model.config.to_dict(), seen["tokens"], seen["logit_total"], seen["tokens"] / n,
                               full=cfg.method.full and cfg.training_quant == "none",
                               trainable_params=trainable)
    return flops * (cfg.world_size if distributed else 1)


def build_model(cfg: TrainConfig, base_dir: Path, dev: torch.device, workdir: Path | None = None):
    """The base (full precision, NF4 or int8) with the PEFT method's adapter (its plugin's peft
    config, services/trainer/peft/), or bare for full fine-tuning. ``workdir``: where a method
    keeps what its save needs (PiSSA's initial adapter)."""
    from peft import get_peft_model

    tq = cfg.training_quant
    if tq == "none":
        dtype = torch.float32 if cpu_bf16_adapter(cfg, dev) else weights_dtype(cfg, dev)
        model = modeling.load_causal_lm(base_dir, dev, for_training=True, dtype=dtype)
    else:  # the study's QLoRA (NF4) or INT8 base, defined once in modeling
        model = modeling.load_quantized_base(base_dir, cfg.quant.value, dev)
        # Not peft's prepare_model_for_kbit_training: it would upcast lm_head to fp32.
        for p in model.parameters():
            p.requires_grad_(False)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not cfg.method.full:
            model.enable_input_require_grads()
    if cfg.method.full:
        return model
    targets = lora_targets(model, cfg.adapter.target_modules)
    model = get_peft_model(model, cfg.method.build(cfg.adapter, targets, cfg.seed))
    if cfg.method.prepared and workdir is not None:
        cfg.method.prepared(model, cfg.adapter, workdir)
    if cpu_bf16_adapter(cfg, dev):
        frozen_linears_to_bf16(model)
    return model


def cpu_bf16_adapter(cfg: TrainConfig, dev: torch.device) -> bool:
    """An adapter on a CPU with ``dtype: bfloat16``, or ``auto`` where the CPU has native bf16:
    the frozen linear layers compute in bf16, the rest stays fp32 (services/trainer/cpu_bf16.py,
    :meth:`TrainConfig.bf16_frozen_on_cpu`). Full fine-tuning in bf16 on a CPU keeps
    bf16 weights throughout, and a GPU keeps bf16 weights with autocast."""
    return cfg.bf16_frozen_on_cpu(dev.type)


def lora_targets(model, wanted: list[str]) -> str | list[str]:
    """The adapter's target modules on this architecture. ``all-linear`` and names the model has
    are used as given; the default (q/k/v/o_proj, the study's, present in Llama, Qwen, Mistral...)
    falls back to peft's per-architecture default where the model names its projections otherwise
    (GPT-2's ``c_attn``, Falcon's ``query_key_value``). Raises ValidationError when none match."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    from services.common.contract.errors import ValidationError
    if wanted == ["all-linear"]:
        return "all-linear"
    linear = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    if set(wanted) & linear:
        return list(wanted)
    arch = getattr(model.config, "model_type", "")
    if list(wanted) == DEFAULT_TARGETS and arch in PEFT_DEFAULTS:
        return list(PEFT_DEFAULTS[arch])
    raise ValidationError(f"lora.target_modules {wanted} match no linear module of this {arch or 'model'}; "
                          f"its linear modules: {', '.join(sorted(linear))}")


def fsdp_args(cfg: TrainConfig, model, dev: torch.device) -> dict[str, Any]:
    """FSDP for full fine-tuning on several GPUs (each GPU holds a shard of weights, gradients and
    optimizer states); adapters train under plain DDP (their states are small)."""
    if cfg.world_size > 1 and cfg.method.full and dev.type == "cuda":
        layer = (getattr(model, "_no_split_modules", None) or ["Qwen3DecoderLayer"])[0]
        return {"fsdp": "full_shard auto_wrap", "fsdp_config": {"transformer_layer_cls_to_wrap": [layer]}}
    return {}


def save_model(trainer, model, tok, cfg: TrainConfig, out: Path, base_dir: Path,
               dev: torch.device | None = None) -> None:
    dev = dev or modeling.device()
    if cfg.method.full:
        trainer.save_model(str(out))  # every rank calls it: under FSDP it gathers the shards
        if trainer.is_world_process_zero():
            (out / "training_args.bin").unlink(missing_ok=True)  # a pickle; the metadata says it all
            tok.save_pretrained(out)
        return
    if not trainer.is_world_process_zero():
        return
    if cfg.method.save_adapter:  # a method whose adapter needs converting for the original base (PiSSA)
        cfg.method.save_adapter(model, out / "adapter", out.parent)
    else:
        model.save_pretrained(out / "adapter")
    if cfg.merge_after_train and cfg.training_quant == "none" and not cpu_bf16_adapter(cfg, dev):
        model.merge_and_unload().save_pretrained(out)
    elif cfg.merge_after_train:  # onto the quantized base dequantized, or onto the base in fp32 when
        # the frozen layers trained in bf16 (merged into bf16 weights, the update would be rounded)
        # saved: the second base then takes the training state's place, not a place beside it
        release_training_memory(model, getattr(trainer, "optimizer", None))
        dtype = torch.float32 if cpu_bf16_adapter(cfg, dev) else "auto"
        modeling.merge_adapter(base_dir, out / "adapter", cfg.quant.value, dev, dtype).save_pretrained(out)
    tok.save_pretrained(out)


def release_training_memory(model, optimizer=None) -> None:
    """Free a trained model's weights, gradients and optimizer states wherever they are referenced
    (the Trainer, accelerate and the optimizer hold the same parameter objects): each parameter
    keeps its dtype and device but no elements; the model is unusable afterwards. Measured on
    SmolLM2-135M with bf16 frozen layers on a CPU: the merge's second (fp32) base raised the job's
    peak RSS 0.42 GiB above training's; with this first, 0.03-0.11 GiB (docs/BENCHMARKS.md)."""
    if optimizer is not None:
        optimizer.state.clear()
    for p in model.parameters():
        p.grad = None
        p.data = torch.empty(0, dtype=p.data.dtype, device=p.data.device)
    gc.collect()


class _Events(TrainerCallback):
    """Loss, learning rate, tokens/s and step/total to the job's events (rank 0 only)."""

    def __init__(self, report, total: int, seen: dict):
        self.report, self.total, self.seen, self.t0 = report, total, seen, time.time()

    def on_log(self, args, state, control, logs=None, **kw):
        if state.is_world_process_zero and logs and "loss" in logs:
            elapsed = max(time.time() - self.t0, 1e-9)
            self.report.progress(state.global_step, self.total, {
                "loss": float(logs["loss"]), "learning_rate": float(logs.get("learning_rate", 0.0)),
                "tokens_per_s": self.seen["tokens"] * args.world_size / elapsed})


class _Checkpoints(TrainerCallback):
    """After the Trainer saved a checkpoint locally, commit it to storage (rank 0)."""

    def __init__(self, store, cfg: TrainConfig, dtype: str):
        self.store, self.cfg, self.dtype = store, cfg, dtype

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            # the dtype auto resolved to on this machine: a resume elsewhere says when it differs
            checkpoints.upload(self.store, self.cfg.checkpoint_prefix, state.global_step, local,
                               {"output_name": self.cfg.output_name, "dtype": self.dtype})



# ----------------------------------------------------------------------------- batches


def collate(batch: list[dict[str, list[int]]], pad_id: int, packing: str | None = None,
            max_len: int = 1024, answer_logits_only: bool = False) -> dict[str, torch.Tensor]:
    """Pad a micro-batch into a tensor batch: ``input_ids``/``labels`` ``(rows, width)`` long.
    With ``packing`` the examples share rows (filled up to max_len) with per-example
    ``position_ids``: no padding compute, the same loss as unpacked. Attention is kept within each
    example by ``packing="positions"``: the model attends with
    services/trainer/packed_attention.py, which finds the examples from the positions (padding at
    a row's end is one more example of its own); or by ``packing="mask"``: a block-diagonal
    causal ``attention_mask`` ``(rows, 1, width, width)`` bool, for SDPA models that cannot use
    it. ``None``: one padded row per example. With ``answer_logits_only`` the
    model computes the lm_head only where a label is predicted (``logits_to_keep`` +
    ``shift_labels``): with a 152k vocabulary and a few answer tokens per ~200-token prompt, the
    full-sequence logits are most of the compute and memory of a step, and all of it is wasted
    under a completion-only loss."""
    if packing not in (None, "positions", "mask"):
        raise ValueError(f"packing={packing!r}: expected None, 'positions' or 'mask'")
    out = _pad(batch, pad_id, packing, max_len)
    if answer_logits_only:
        targets = out["labels"][:, 1:]
        keep = (targets != -100).any(dim=0).nonzero().flatten()
        out["logits_to_keep"] = keep
        out["shift_labels"] = targets[:, keep]
    return out


def _pad(batch: list[dict[str, list[int]]], pad_id: int, packing: str | None, max_len: int
         ) -> dict[str, torch.Tensor]:
    rows = [[b] for b in batch]
    if packing:
        cap = max(max_len, max(len(b["input_ids"]) for b in batch))
        rows = []
        for b in batch:
            if rows and sum(len(x["input_ids"]) for x in rows[-1]) + len(b["input_ids"]) <= cap:
                rows[-1].append(b)
            else:
                rows.append([b])
    width = max(sum(len(x["input_ids"]) for x in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    if not packing:
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (b,) in enumerate(rows):
            n = len(b["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    # Padding positions see only themselves: an all-masked row would give NaNs in SDPA.
    mask4 = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1, 1) if packing == "mask" else None
    for i, row in enumerate(rows):
        off = 0
        for b in row:
            n = len(b["input_ids"])
            ids[i, off:off + n], labels[i, off:off + n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"])
            positions[i, off:off + n] = torch.arange(n)
            if mask4 is not None:
                mask4[i, 0, off:off + n, off:off + n] = torch.tril(torch.ones(n, n, dtype=torch.bool))
            labels[i, off] = -100  # the previous example's last token does not predict this one
            off += n
        positions[i, off:] = torch.arange(width - off)  # the padding: one segment, not one per token
    out = {"input_ids": ids, "labels": labels, "position_ids": positions}
    return out | ({"attention_mask": mask4} if mask4 is not None else {})
