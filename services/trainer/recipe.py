"""The training recipe: supervised fine-tuning of a model from storage on a dataset from storage,
read top to bottom. Runs in the job's child process (see services/common/runtime.py).

Data formatting comes from the shared task definitions, so the model learns exactly the
``\\boxed{answer}`` format the evaluator parses; the loss is on the answer only."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from services.common import artifacts, data_import, modeling, tasks
from services.common.naming import QUANT_TAGS, QuantMethod
from services.common.runtime import JobContext


def run(ctx: JobContext, cfg: dict[str, Any]) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    t_start = time.time()
    dev = modeling.device()
    modeling.reset_peak_memory()
    task = tasks.get_task(cfg["task"])

    # 1. Inputs from storage.
    ctx.log(f"fetching base model {cfg['base_model']} and dataset {cfg['dataset']}")
    base_dir, base_manifest = modeling.fetch_model(ctx.store, cfg["base_model"], ctx.workdir)
    df = data_import.load_split(ctx.store, cfg["dataset"], "train")
    data_import.validate_columns(task, df)
    if cfg["train_limit"]:
        df = df.head(cfg["train_limit"])
    ds_manifest = artifacts.require_manifest(ctx.store, "datasets", cfg["dataset"], "dataset")

    # 2. Examples: the evaluator's exact prompt, then the boxed answer; loss on the answer only.
    tok = modeling.load_tokenizer(base_dir, padding_side="right")
    examples = [encode_example(tok, task, row, cfg["max_seq_length"]) for row in df.to_dict("records")]

    # 3. Model + adapter.
    torch.manual_seed(cfg["seed"])
    model = modeling.load_causal_lm(base_dir, dev, for_training=True)
    lora = cfg["lora"]
    targets = "all-linear" if lora["target_modules"] == ["all-linear"] else lora["target_modules"]
    model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                             target_modules=targets, task_type="CAUSAL_LM"))
    trainable, total = model.get_nb_trainable_parameters()

    # 4. The loop: transformers' Trainer.
    per_step = cfg["per_device_batch_size"] * cfg["gradient_accumulation_steps"]
    total_steps = cfg["max_steps"] or math.ceil(cfg["num_train_epochs"] * math.ceil(len(examples) / per_step))
    loss_curve: list[dict[str, float]] = []
    seen = {"tokens": 0}  # real (non-pad) tokens the loop consumed, counted by the collator

    def collate_counting(batch):
        seen["tokens"] += sum(len(b["input_ids"]) for b in batch)
        return collate(batch, tok.pad_token_id)

    class Events(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                point = {"step": state.global_step, "loss": float(logs["loss"]),
                         "learning_rate": float(logs.get("learning_rate", 0.0))}
                loss_curve.append(point)
                elapsed = max(time.time() - t_train, 1e-9)
                ctx.progress(state.global_step, total_steps,
                             {"loss": point["loss"], "learning_rate": point["learning_rate"],
                              "tokens_per_s": seen["tokens"] / elapsed})

    args = TrainingArguments(
        output_dir=str(Path(ctx.workdir) / "trainer"), max_steps=total_steps,
        per_device_train_batch_size=cfg["per_device_batch_size"],
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"], learning_rate=cfg["learning_rate"],
        weight_decay=cfg["weight_decay"], warmup_steps=int(cfg["warmup_ratio"] * total_steps),
        max_grad_norm=cfg["max_grad_norm"], seed=cfg["seed"], logging_steps=1, save_strategy="no",
        report_to=[], disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
        use_cpu=dev.type == "cpu", bf16=modeling.compute_dtype(dev) == torch.bfloat16,
        gradient_checkpointing=cfg["gradient_checkpointing"], optim="adamw_torch")
    trainer = Trainer(model=model, args=args, train_dataset=examples,
                      data_collator=collate_counting, callbacks=[Events()])
    ctx.log(f"training {cfg['output_name']}: {total_steps} steps, {len(examples)} examples, "
            f"{trainable:,}/{total:,} trainable parameters")
    t_train = time.time()
    train_out = trainer.train()
    train_s = time.time() - t_train

    # 5. Save: adapter in adapter/, merged model at the root (loads with plain from_pretrained).
    out = Path(ctx.workdir) / "out"
    model.save_pretrained(out / "adapter")
    if cfg["merge_after_train"]:
        model.merge_and_unload().save_pretrained(out)
    tok.save_pretrained(out)
    memory = modeling.peak_memory()
    quant = QuantMethod.NO_QUANT
    metadata = {
        "model_name": cfg["output_name"], "base_model": cfg["base_model"], "dataset": cfg["dataset"],
        "task": task.name,
        "model_info": {"total_params": total, "trainable_params": trainable,
                       "trainable_percentage": round(100.0 * trainable / total, 4)},
        "training_parameters": {k: cfg[k] for k in (
            "peft_method", "lora", "max_steps", "num_train_epochs", "per_device_batch_size",
            "gradient_accumulation_steps", "learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm",
            "max_seq_length", "seed", "merge_after_train", "train_limit", "gradient_checkpointing")}
        | {"total_steps": total_steps, "examples": len(examples)},
        "quantization": {"method": quant.value, "quant_tag": QUANT_TAGS[quant], "weights_bits": None,
                         "activations_bits": None, "backend": None},
        "memory": memory, "wall_time_s": round(time.time() - t_start, 3), "train_time_s": round(train_s, 3),
        "tokens_per_s": round(seen["tokens"] / max(train_s, 1e-9), 2), "tokens_seen": seen["tokens"],
        "final_loss": loss_curve[-1]["loss"] if loss_curve else None,
        "train_loss": float(train_out.training_loss), "loss_curve": loss_curve,
        "device": str(dev), "hardware": modeling.hardware(),
    }
    (out / "training_metadata.json").write_text(json.dumps(metadata, indent=2))

    # 6. Commit: manifest last, with lineage.
    artifacts.commit_dir(ctx.store, "models", cfg["output_name"], out, {
        "kind": "trained", "name": cfg["output_name"], "parents": [cfg["base_model"]],
        "base_model": cfg["base_model"], "base_manifest_sha": artifacts.manifest_digest(base_manifest),
        "dataset": cfg["dataset"], "dataset_manifest_sha": artifacts.manifest_digest(ds_manifest),
        "task": task.name, "spec": cfg, "merged": cfg["merge_after_train"], "adapter_path": "adapter",
        "quantization": metadata["quantization"], "versions": modeling.library_versions(),
        "git_commit": modeling.git_commit()})
    return {"outputs": {"model": f"s3://models/{cfg['output_name']}/"},
            "metrics": {"final_loss": metadata["final_loss"] or 0.0, "train_time_s": train_s,
                        "tokens_per_s": metadata["tokens_per_s"], "peak_rss_gb": memory["peak_rss_gb"],
                        "peak_vram_reserved_gb": memory["peak_vram_reserved_gb"],
                        "peak_vram_allocated_gb": memory["peak_vram_allocated_gb"],
                        "trainable_params": trainable}}


def encode_example(tok, task, row: dict, max_len: int) -> dict[str, list[int]]:
    prompt = tok.apply_chat_template(tasks.build_messages(task, row), add_generation_prompt=True,
                                     enable_thinking=False, tokenize=False)
    answer = tasks.format_target(task, row) + tok.eos_token + "\n"
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok(answer, add_special_tokens=False)["input_ids"]
    # Over-long examples lose the start of the prompt, never the answer.
    ids = (p_ids + a_ids)[-max_len:]
    n_answer = min(len(a_ids), len(ids))
    return {"input_ids": ids, "labels": [-100] * (len(ids) - n_answer) + ids[-n_answer:]}


def collate(batch: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
