"""The training recipe: supervised fine-tuning of a model from storage on a dataset from storage,
read top to bottom. Runs in the job's child process (see services/common/job_runtime.py); with
``world_size > 1`` the same :func:`train` runs in every torchrun worker (services/trainer/ddp.py).

Data formatting comes from the shared task definitions, so the model learns exactly the
``\\boxed{answer}`` format the evaluator parses; the loss is on the answer only (by default).
The loop is transformers' ``Trainer``; checkpoints go to storage every ``save_steps`` and a
re-queued or resubmitted run continues from its last one (services/trainer/checkpoints.py)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from services.common import artifacts, modeling, tasks
from services.common.errors import PreconditionError
from services.common.job_context import JobContext
from services.trainer import checkpoints
from services.trainer.memory import estimate_training_memory
from services.trainer.spec import OPTIMIZERS, TRAINING_QUANT


def run(ctx: JobContext, cfg: dict[str, Any]) -> dict[str, Any]:
    from services.common import data_import  # pandas/pyarrow: bench/gpu_bench.py imports this module without
    t_start = time.time()
    task = tasks.get_task(cfg["task"])
    workdir = Path(ctx.workdir)

    # 1. Inputs from storage.
    ctx.log(f"fetching base model {cfg['base_model']} and dataset {cfg['dataset']}")
    base_dir, base_manifest = modeling.fetch_model(ctx.store, cfg["base_model"], workdir)
    df = tasks.with_answers(task, data_import.load_split(ctx.store, cfg["dataset"], "train"))  # older SQuAD sets
    data_import.validate_columns(task, df)
    if cfg["train_limit"]:
        df = df.head(cfg["train_limit"])
    ds_manifest = artifacts.require_manifest(ctx.store, "datasets", cfg["dataset"], "dataset")

    # 2. Examples: the evaluator's exact prompt, then the boxed answer.
    tok = modeling.load_tokenizer(base_dir, padding_side="right")
    examples = [encode_example(tok, task, row, cfg["max_seq_length"], cfg["completion_only_loss"])
                for row in df.to_dict("records")]
    if cfg["memory_estimate"]:
        ctx.metrics({"memory_estimate_gb": cfg["memory_estimate_gb"]}, "memory estimate at submit (GiB)")

    # 3. Resume: this run's last checkpoint in storage, if any (a crash re-queue or a resubmit).
    resume = None
    if cfg["resume"] == "auto":
        resume = checkpoints.fetch_latest(ctx.store, cfg["checkpoint_prefix"], workdir / "resume")
        if resume:
            ctx.log(f"resuming from checkpoint step {resume[0]} (attempt {ctx.attempt})")
    elif ctx.attempt > 1:
        ctx.log("resume 'never': starting again from step 0")

    # 4. Train (in this process, or in world_size torchrun workers) and save to out/.
    out = workdir / "out"
    total_steps = planned_steps(cfg, len(examples))
    if cfg["world_size"] > 1 and modeling.device().type == "cuda" and cfg["world_size"] > torch.cuda.device_count():
        raise PreconditionError(f"world_size {cfg['world_size']} > {torch.cuda.device_count()} visible GPUs")
    if cfg["world_size"] == 1:
        stats = train(cfg, base_dir, examples, out, resume and resume[1], ctx.store, ctx, total_steps)
    else:
        from services.trainer import ddp
        stats = ddp.launch(cfg, base_dir, examples, out, resume and resume[1], ctx.store, ctx, total_steps)

    # 5. Metadata: the study's fields, memory measured vs estimated, speed, the loss curve.
    quant = TRAINING_QUANT[cfg["training_quant"]]
    measured = stats["memory"]["peak_vram_reserved_gb"] or stats["memory"]["peak_rss_gb"]
    est_actual = estimate_training_memory(json.loads((base_dir / "config.json").read_text()),
                                          {**cfg, "micro_batch_tokens": stats["micro_batch_tokens"],
                                           "logit_tokens": stats["logit_rows"]})
    metadata = {
        "model_name": cfg["output_name"], "base_model": cfg["base_model"], "dataset": cfg["dataset"],
        "task": task.name,
        "model_info": {"total_params": stats["total_params"], "trainable_params": stats["trainable_params"],
                       "trainable_percentage": round(100.0 * stats["trainable_params"] / stats["total_params"], 4)},
        "training_parameters": {k: cfg[k] for k in (
            "peft_method", "lora", "training_quant", "max_steps", "num_train_epochs", "per_device_batch_size",
            "gradient_accumulation_steps", "learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm",
            "max_seq_length", "seed", "merge_after_train", "train_limit", "gradient_checkpointing", "optimizer",
            "packing", "group_by_length", "completion_only_loss", "lr_scheduler", "world_size", "save_steps")}
        | {"total_steps": total_steps, "examples": len(examples)},
        "quantization": quantization_info(cfg),
        "memory": stats["memory"],
        "memory_estimate": {"at_submit": cfg["memory_estimate"], "with_actual_lengths": est_actual,
                            "measured_gb": measured,
                            "measured_kind": "peak_vram_reserved_gb" if stats["memory"]["peak_vram_reserved_gb"]
                            else "peak_rss_gb",
                            "error_pct_actual_lengths": round(100.0 * (est_actual["total_gb"] - measured)
                                                              / max(measured, 1e-9), 1)},
        "wall_time_s": round(time.time() - t_start, 3), "train_time_s": round(stats["train_s"], 3),
        "tokens_per_s": round(stats["tokens"] / max(stats["train_s"], 1e-9), 2), "tokens_seen": stats["tokens"],
        "mfu": _mfu(stats, cfg),
        "final_loss": stats["loss_curve"][-1]["loss"] if stats["loss_curve"] else None,
        "loss_curve": stats["loss_curve"], "resumed_from_step": resume[0] if resume else 0,
        "attempt": ctx.attempt, "device": stats["device"], "hardware": modeling.hardware(),
    }
    (out / "training_metadata.json").write_text(json.dumps(metadata, indent=2))

    # 6. Commit: manifest last, with lineage; then this run's checkpoints are garbage.
    artifacts.commit_dir(ctx.store, "models", cfg["output_name"], out, {
        "kind": "trained", "name": cfg["output_name"], "parents": [cfg["base_model"]],
        "base_model": cfg["base_model"], "base_manifest_sha": artifacts.manifest_digest(base_manifest),
        "dataset": cfg["dataset"], "dataset_manifest_sha": artifacts.manifest_digest(ds_manifest),
        "task": task.name, "spec": cfg, "peft_method": cfg["peft_method"],
        "merged": cfg["merge_after_train"] or cfg["peft_method"] == "none",
        "adapter_path": None if cfg["peft_method"] == "none" else "adapter",
        "quantization": metadata["quantization"], "versions": modeling.library_versions(),
        "git_commit": modeling.git_commit()})
    checkpoints.clear(ctx.store, cfg["checkpoint_prefix"])
    mem = stats["memory"]
    return {"outputs": {"model": f"s3://models/{cfg['output_name']}/"},
            "metrics": {"final_loss": metadata["final_loss"] or 0.0, "train_time_s": stats["train_s"],
                        "tokens_per_s": metadata["tokens_per_s"], "peak_rss_gb": mem["peak_rss_gb"],
                        "mfu": metadata["mfu"].get("mfu", 0.0),
                        "peak_vram_reserved_gb": mem["peak_vram_reserved_gb"],
                        "peak_vram_allocated_gb": mem["peak_vram_allocated_gb"],
                        "trainable_params": stats["trainable_params"],
                        "memory_estimate_gb": cfg["memory_estimate_gb"],
                        "resumed_from_step": metadata["resumed_from_step"]}}


def _mfu(stats: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Achieved model FLOP/s over the measured matmul peak of this machine, dtype and thread count
    (services/common/mfu.py; under DDP the peak of one device times the world size)."""
    from services.common import mfu
    if "flops" not in stats:
        return {}
    dev = stats["device"]
    out = mfu.mfu(stats["flops"] / cfg["world_size"], stats["train_s"], stats["dtype"],
                  "cuda" if dev.startswith("cuda") else "cpu")
    return {**out, "model_flops": stats["flops"], "dtype": stats["dtype"], "torch_threads": torch.get_num_threads()}


def planned_steps(cfg: dict[str, Any], n_examples: int) -> int:
    """Optimizer steps: max_steps, or epochs over the data (the Trainer's own arithmetic)."""
    if cfg["max_steps"]:
        return cfg["max_steps"]
    micro_batches = math.ceil(n_examples / (cfg["per_device_batch_size"] * cfg["world_size"]))
    return max(1, math.ceil(cfg["num_train_epochs"] * math.ceil(micro_batches / cfg["gradient_accumulation_steps"])))


def quantization_info(cfg: dict[str, Any]) -> dict[str, Any]:
    tq = cfg["training_quant"]
    quant = TRAINING_QUANT[tq]
    from services.common.naming import QUANT_TAGS
    info = {"method": quant.value, "quant_tag": QUANT_TAGS[quant], "weights_bits": None,
            "activations_bits": None, "backend": None, "stage": "training"}
    if tq == "qlora":
        info.update(weights_bits=4, backend="bitsandbytes", quant_type="nf4", double_quant=True,
                    compute_dtype="bfloat16", lm_head_dtype="bfloat16")
    elif tq == "int8":
        info.update(weights_bits=8, backend="bitsandbytes", lm_head_dtype="unquantized")
    if tq != "none":
        info["merged_weights"] = ("the quantized base dequantized plus the adapter, unquantized: exactly the "
                                  "function trained; adapter/ applies to the quantized base")
    return info


# ----------------------------------------------------------------------------- the training loop


def train(cfg: dict[str, Any], base_dir: Path, examples: list[dict], out: Path, resume_dir: Path | None,
          store, report, total_steps: int, dev: torch.device | None = None) -> dict[str, Any]:
    """Build the model, run transformers' Trainer, save to ``out`` (adapter in adapter/, merged
    model at the root). ``report`` has ``progress`` and ``log`` (a JobContext, or the DDP
    workers' stdout relay). Returns what the metadata needs."""
    from transformers import Trainer, TrainingArguments, set_seed

    dev = dev or modeling.device()
    modeling.reset_peak_memory()
    set_seed(cfg["seed"])
    tok = modeling.load_tokenizer(base_dir, padding_side="right")
    model = build_model(cfg, base_dir, dev)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    seen = {"tokens": 0, "micro_batch_tokens": 0, "logit_rows": 0, "logit_total": 0, "examples": 0}

    def collate_counting(batch):
        seen["tokens"] += sum(len(b["input_ids"]) for b in batch)
        out_batch = collate(batch, tok.pad_token_id, cfg["packing"], cfg["max_seq_length"],
                            cfg["completion_only_loss"] and cfg.get("answer_logits_only", True))
        seen["micro_batch_tokens"] = max(seen["micro_batch_tokens"], out_batch["input_ids"].numel())
        rows = out_batch["shift_labels"].numel() if "shift_labels" in out_batch else out_batch["input_ids"].numel()
        seen["logit_rows"] = max(seen["logit_rows"], rows)
        seen["logit_total"] += rows  # for MFU (services/common/mfu.py)
        seen["examples"] += len(batch)
        return out_batch

    distributed = cfg["world_size"] > 1
    args = TrainingArguments(
        output_dir=str(out.parent / "trainer"), max_steps=total_steps,
        per_device_train_batch_size=cfg["per_device_batch_size"],
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"], learning_rate=cfg["learning_rate"],
        weight_decay=cfg["weight_decay"], warmup_steps=int(cfg["warmup_ratio"] * total_steps),
        lr_scheduler_type=cfg["lr_scheduler"], max_grad_norm=cfg["max_grad_norm"], seed=cfg["seed"],
        optim=OPTIMIZERS[cfg["optimizer"]], logging_steps=cfg["logging_steps"],
        save_strategy="steps" if cfg["save_steps"] else "no", save_steps=cfg["save_steps"] or 500,
        save_total_limit=1, report_to=[], disable_tqdm=True, remove_unused_columns=False,
        dataloader_num_workers=0, use_cpu=dev.type == "cpu",
        bf16=dev.type == "cuda" and modeling.compute_dtype(dev) == torch.bfloat16,
        train_sampling_strategy="group_by_length" if cfg["group_by_length"] else "random",
        ddp_backend=("gloo" if dev.type == "cpu" else "nccl") if distributed else None,
        ddp_find_unused_parameters=False if distributed else None,
        **fsdp_args(cfg, model, dev))
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collate_counting,
                      callbacks=[_Events(report, total_steps, seen), _Checkpoints(store, cfg)])
    if trainer.is_world_process_zero():
        report.log(f"training {cfg['output_name']}: {total_steps} steps, {len(examples)} examples, "
                   f"{trainable:,}/{total:,} trainable parameters on {dev}"
                   + (f" x {cfg['world_size']} processes" if distributed else ""))
    t0 = time.time()
    trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
    train_s = time.time() - t0

    tokens = seen["tokens"]
    if distributed:
        t = torch.tensor([tokens], dtype=torch.long, device=args.device)
        torch.distributed.all_reduce(t)
        tokens = int(t.item())
    save_model(trainer, model, tok, cfg, out, base_dir)
    curve = [{"step": h["step"], "loss": float(h["loss"]), "learning_rate": float(h.get("learning_rate", 0.0))}
             for h in trainer.state.log_history if "loss" in h]
    return {"trainable_params": trainable, "total_params": total, "loss_curve": curve, "tokens": tokens,
            "train_s": train_s, "memory": modeling.peak_memory(),
            "micro_batch_tokens": seen["micro_batch_tokens"], "logit_rows": seen["logit_rows"],
            "device": str(dev), "flops": _train_flops(model, cfg, seen, trainable, distributed),
            "dtype": str(modeling.compute_dtype(dev)).removeprefix("torch.")}


def _train_flops(model, cfg: dict[str, Any], seen: dict, trainable: int, distributed: bool) -> float:
    """Model FLOPs of this process's training (services/common/mfu.py), times the world size."""
    from services.common import mfu
    n = max(seen["examples"], 1)
    flops = mfu.training_flops(model.config.to_dict(), seen["tokens"], seen["logit_total"], seen["tokens"] / n,
                               full=cfg["peft_method"] == "none" and cfg["training_quant"] == "none",
                               trainable_params=trainable)
    return flops * (cfg["world_size"] if distributed else 1)


def build_model(cfg: dict[str, Any], base_dir: Path, dev: torch.device):
    """The base (full precision, NF4 or int8) with the chosen adapter, or bare for full FT."""
    from peft import LoraConfig, VeraConfig, get_peft_model

    tq, peft = cfg["training_quant"], cfg["peft_method"]
    if tq == "none":
        model = modeling.load_causal_lm(base_dir, dev, for_training=True)
    else:  # the study's QLoRA (NF4) or INT8 base, defined once in modeling
        model = modeling.load_quantized_base(base_dir, TRAINING_QUANT[tq].value, dev)
        # Not peft's prepare_model_for_kbit_training: it would upcast lm_head to fp32.
        for p in model.parameters():
            p.requires_grad_(False)
    model.config.use_cache = False
    if cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if peft != "none":
            model.enable_input_require_grads()
    if peft == "none":
        return model
    a = cfg["lora"]
    targets = lora_targets(model, a["target_modules"])
    if peft == "vera":
        pconf = VeraConfig(r=a["r"], target_modules=targets, vera_dropout=a["dropout"], d_initial=a["d_initial"],
                           projection_prng_key=cfg["seed"], save_projection=True, task_type="CAUSAL_LM")
    else:
        pconf = LoraConfig(r=a["r"], lora_alpha=a["alpha"], lora_dropout=a["dropout"], target_modules=targets,
                           use_dora=peft == "dora", task_type="CAUSAL_LM")
    return get_peft_model(model, pconf)


def lora_targets(model, wanted: list[str]) -> str | list[str]:
    """The adapter's target modules on this architecture. ``all-linear`` and names the model has
    are used as given; the default (q/k/v/o_proj, the study's, present in Llama, Qwen, Mistral...)
    falls back to peft's per-architecture default where the model names its projections otherwise
    (GPT-2's ``c_attn``, Falcon's ``query_key_value``). Raises ValidationError when none match."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    from services.common.errors import ValidationError
    from services.trainer.spec import DEFAULT_TARGETS
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


def fsdp_args(cfg: dict[str, Any], model, dev: torch.device) -> dict[str, Any]:
    """FSDP for full fine-tuning on several GPUs (each GPU holds a shard of weights, gradients and
    optimizer states); adapters train under plain DDP (their states are small)."""
    if cfg["world_size"] > 1 and cfg["peft_method"] == "none" and dev.type == "cuda":
        layer = (getattr(model, "_no_split_modules", None) or ["Qwen3DecoderLayer"])[0]
        return {"fsdp": "full_shard auto_wrap", "fsdp_config": {"transformer_layer_cls_to_wrap": [layer]}}
    return {}


def save_model(trainer, model, tok, cfg: dict[str, Any], out: Path, base_dir: Path) -> None:
    if cfg["peft_method"] == "none":
        trainer.save_model(str(out))  # every rank calls it: under FSDP it gathers the shards
        if trainer.is_world_process_zero():
            (out / "training_args.bin").unlink(missing_ok=True)  # a pickle; the metadata says it all
            tok.save_pretrained(out)
        return
    if not trainer.is_world_process_zero():
        return
    model.save_pretrained(out / "adapter")
    if cfg["merge_after_train"] and cfg["training_quant"] == "none":
        model.merge_and_unload().save_pretrained(out)
    elif cfg["merge_after_train"]:  # onto the quantized base dequantized: the shared merge
        modeling.merge_adapter(base_dir, out / "adapter", TRAINING_QUANT[cfg["training_quant"]].value,
                               modeling.device()).save_pretrained(out)
    tok.save_pretrained(out)


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

    def __init__(self, store, cfg: dict):
        self.store, self.cfg = store, cfg

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            checkpoints.upload(self.store, self.cfg["checkpoint_prefix"], state.global_step, local,
                               {"output_name": self.cfg["output_name"]})


# ----------------------------------------------------------------------------- data


def encode_example(tok, task, row: dict, max_len: int, completion_only: bool = True) -> dict[str, list[int]]:
    prompt = tasks.render_prompt(tok, tasks.build_messages(task, row))
    # The EOS (the chat template's end token, e.g. <|im_end|>) is labelled: the model learns to
    # stop. The labels come from here, not from the pad id, so pad == EOS (SmolLM2) keeps it.
    answer = tasks.format_target(task, row) + tok.eos_token + "\n"
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok(answer, add_special_tokens=False)["input_ids"]
    # Over-long examples lose the start of the prompt, never the answer.
    ids = (p_ids + a_ids)[-max_len:]
    n_answer = min(len(a_ids), len(ids)) if completion_only else len(ids)
    return {"input_ids": ids, "labels": [-100] * (len(ids) - n_answer) + ids[-n_answer:]}


def collate(batch: list[dict[str, list[int]]], pad_id: int, packing: bool = False,
            max_len: int = 1024, answer_logits_only: bool = False) -> dict[str, torch.Tensor]:
    """Pad a micro-batch into a tensor batch. With ``packing`` the examples share rows (filled up
    to max_len) with a block-diagonal causal mask and per-example positions: no padding compute,
    no attention across examples, the same loss as unpacked. With ``answer_logits_only`` the
    model computes the lm_head only where a label is predicted (``logits_to_keep`` +
    ``shift_labels``): with a 152k vocabulary and a few answer tokens per ~200-token prompt, the
    full-sequence logits are most of the compute and memory of a step, and all of it is wasted
    under a completion-only loss."""
    out = _pad(batch, pad_id, packing, max_len)
    if answer_logits_only:
        targets = out["labels"][:, 1:]
        keep = (targets != -100).any(dim=0).nonzero().flatten()
        out["logits_to_keep"] = keep
        out["shift_labels"] = targets[:, keep]
    return out


def _pad(batch: list[dict[str, list[int]]], pad_id: int, packing: bool, max_len: int) -> dict[str, torch.Tensor]:
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
    mask4 = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1, 1)
    for i, row in enumerate(rows):
        off = 0
        for b in row:
            n = len(b["input_ids"])
            ids[i, off:off + n], labels[i, off:off + n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"])
            positions[i, off:off + n] = torch.arange(n)
            mask4[i, 0, off:off + n, off:off + n] = torch.tril(torch.ones(n, n, dtype=torch.bool))
            labels[i, off] = -100  # the previous example's last token does not predict this one
            off += n
    return {"input_ids": ids, "labels": labels, "attention_mask": mask4, "position_ids": positions}
