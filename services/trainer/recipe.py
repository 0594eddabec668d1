"""The training recipe: supervised fine-tuning of a model from storage on a dataset from storage,
read top to bottom. Runs in the job's child process (see services/common/jobs/runtime.py); the loop
itself is services/trainer/loop.py, run here or, with ``world_size > 1``, in every torchrun
worker (services/trainer/ddp.py).

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

from services.common.storage import artifacts
from services.common.hardware import devices
from services.common.torch_utils import modeling
from services.common.data import tasks
from services.common.contract.errors import PreconditionError
from services.common.contract.identity import config_digest, digest_of
from services.common.jobs.child import JobContext
from services.trainer import checkpoints
from services.trainer.config import TrainConfig
from services.trainer.loop import dtype_name, train
from services.trainer.memory import estimate_training_memory


def run(ctx: JobContext, config: dict[str, Any]) -> dict[str, Any]:
    """Train ``config`` (the door's :func:`~services.trainer.config.resolve_train_spec` output, as
    the job record stores it: :meth:`TrainConfig.to_dict`) and commit ``models/<output_name>/``:
    the merged model at the root (unless merge_after_train is false), the adapter under
    ``adapter/``, ``training_metadata.json`` (loss curve, memory measured vs estimated in GiB,
    tokens/s, MFU). Returns ``{"outputs": {"model": uri}, "metrics": {...}}`` (seconds, GiB,
    tokens/s). Raises PreconditionError when world_size exceeds the visible GPUs; library errors
    (out of memory, a bad checkpoint) propagate and fail the job."""
    from services.common.data import importing as data_import# pandas/pyarrow: bench/gpu_bench.py imports this module without
    cfg = TrainConfig.from_dict(config)
    as_dict = cfg.to_dict()  # what the metadata and the manifest record
    t_start = time.time()
    task = tasks.get_task(cfg.task)
    workdir = Path(ctx.workdir)

    # 1. Inputs from storage.
    ctx.log(f"fetching base model {cfg.base_model} and dataset {cfg.dataset}")
    base_dir, base_manifest = modeling.fetch_model(ctx.store, cfg.base_model, workdir)
    df = tasks.with_answers(task, data_import.load_split(ctx.store, cfg.dataset, "train"))  # older SQuAD sets
    data_import.validate_columns(task, df)
    if cfg.train_limit:
        df = df.head(cfg.train_limit)
    ds_manifest = artifacts.require_manifest(ctx.store, "datasets", cfg.dataset, "dataset")
    parent_digests = [digest_of(base_manifest, cfg.base_model)]  # the model's identity: its config and parents
    digest = config_digest("train", as_dict, parent_digests)

    # 2. Examples: the evaluator's exact prompt, then the boxed answer.
    tok = modeling.load_tokenizer(base_dir, padding_side="right")
    examples = [encode_example(tok, task, row, cfg.max_seq_length, cfg.completion_only_loss)
                for row in df.to_dict("records")]
    if cfg.memory_estimate:
        ctx.metrics({"memory_estimate_gb": cfg.memory_estimate_gb}, "memory estimate at submit (GiB)")

    # 3. Resume: this run's last checkpoint in storage, if any (a crash re-queue or a resubmit).
    resume = None
    if cfg.resume == "auto":
        resume = checkpoints.fetch_latest(ctx.store, cfg.checkpoint_prefix, workdir / "resume")
        if resume:
            ctx.log(f"resuming from checkpoint step {resume.step} (attempt {ctx.attempt})")
            now = dtype_name(cfg, modeling.device())
            if resume.info.get("dtype", now) != now:  # dtype auto resolves per machine (config.py)
                ctx.log(f"the checkpoint trained in {resume.info['dtype']}, this run trains in {now}: "
                        "set dtype explicitly to keep one precision across machines")
    elif ctx.attempt > 1:
        ctx.log("resume 'never': starting again from step 0")

    # 4. Train (in this process, or in world_size torchrun workers) and save to out/.
    out = workdir / "out"
    total_steps = planned_steps(cfg, len(examples))
    from services.trainer import ddp
    here = ddp.ranks_here(cfg.world_size)  # fewer than world_size when Ray spread the job over nodes
    if here > 1 and modeling.device().type == "cuda" and here > len(devices.gpus()):
        raise PreconditionError(f"{here} processes on this node > {len(devices.gpus())} visible GPUs")
    if cfg.world_size == 1:
        stats = train(cfg, base_dir, examples, out, resume and resume.path, ctx.store, ctx, total_steps)
    else:
        stats = ddp.launch(cfg, base_dir, examples, out, resume and resume.path, ctx.store, ctx, total_steps)

    # 5. Metadata: the study's fields, memory measured vs estimated, speed, the loss curve.
    measured = stats["memory"]["peak_vram_reserved_gb"] or stats["memory"]["peak_rss_gb"]
    est_actual = estimate_training_memory(json.loads((base_dir / "config.json").read_text()), cfg,
                                          stats["micro_batch_tokens"], stats["logit_rows"])
    metadata = {
        "model_name": cfg.output_name, "base_model": cfg.base_model, "dataset": cfg.dataset,
        "task": task.name,
        "model_info": {"total_params": stats["total_params"], "trainable_params": stats["trainable_params"],
                       "trainable_percentage": round(100.0 * stats["trainable_params"] / stats["total_params"], 4)},
        "training_parameters": {k: as_dict[k] for k in (
            "peft_method", "lora", "training_quant", "max_steps", "num_train_epochs", "per_device_batch_size",
            "gradient_accumulation_steps", "learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm",
            "max_seq_length", "seed", "merge_after_train", "train_limit", "gradient_checkpointing", "optimizer",
            "packing", "group_by_length", "completion_only_loss", "lr_scheduler", "world_size", "save_steps")}
        | {"total_steps": total_steps, "examples": len(examples)},
        "quantization": quantization_info(cfg),
        "memory": stats["memory"],
        "memory_estimate": {"at_submit": cfg.memory_estimate, "with_actual_lengths": est_actual,
                            "measured_gb": measured,
                            "measured_kind": "peak_vram_reserved_gb" if stats["memory"]["peak_vram_reserved_gb"]
                            else "peak_rss_gb",
                            "error_pct_actual_lengths": round(100.0 * (est_actual["total_gb"] - measured)
                                                              / max(measured, 1e-9), 1)},
        "wall_time_s": round(time.time() - t_start, 3), "train_time_s": round(stats["train_s"], 3),
        "tokens_per_s": round(stats["tokens"] / max(stats["train_s"], 1e-9), 2), "tokens_seen": stats["tokens"],
        "mfu": _mfu(stats, cfg),
        "final_loss": stats["loss_curve"][-1]["loss"] if stats["loss_curve"] else None,
        "loss_curve": stats["loss_curve"], "resumed_from_step": resume.step if resume else 0,
        "resumed_from_dtype": resume.info.get("dtype") if resume else None,
        "config_digest": digest, "parent_digests": parent_digests,
        "attempt": ctx.attempt, "device": stats["device"], "dtype": stats["dtype"], "hardware": modeling.hardware(),
    }
    (out / "training_metadata.json").write_text(json.dumps(metadata, indent=2))

    # 6. Commit: manifest last, with lineage; then this run's checkpoints are garbage.
    artifacts.commit_dir(ctx.store, "models", cfg.output_name, out, {
        "kind": "trained", "name": cfg.output_name, "parents": [cfg.base_model],
        "base_model": cfg.base_model, "base_manifest_sha": artifacts.manifest_digest(base_manifest),
        "dataset": cfg.dataset, "dataset_manifest_sha": artifacts.manifest_digest(ds_manifest),
        "task": task.name, "spec": as_dict, "peft_method": cfg.peft_method,
        "config_digest": digest, "parent_digests": parent_digests,
        "merged": cfg.merge_after_train or cfg.method.full,
        "adapter_path": None if cfg.method.full else "adapter",
        "quantization": metadata["quantization"], "versions": modeling.library_versions(),
        "git_commit": modeling.git_commit()})
    checkpoints.clear(ctx.store, cfg.checkpoint_prefix)
    mem = stats["memory"]
    return {"outputs": {"model": f"s3://models/{cfg.output_name}/"},
            "metrics": {"final_loss": metadata["final_loss"] or 0.0, "train_time_s": stats["train_s"],
                        "tokens_per_s": metadata["tokens_per_s"], "peak_rss_gb": mem["peak_rss_gb"],
                        "mfu": metadata["mfu"].get("mfu", 0.0),
                        "peak_vram_reserved_gb": mem["peak_vram_reserved_gb"],
                        "peak_vram_allocated_gb": mem["peak_vram_allocated_gb"],
                        "trainable_params": stats["trainable_params"],
                        "memory_estimate_gb": cfg.memory_estimate_gb,
                        "resumed_from_step": metadata["resumed_from_step"]}}


def _mfu(stats: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """Achieved model FLOP/s over the measured matmul peak of this machine, dtype and thread count
    (services/common/torch_utils/mfu.py; under DDP the peak of one device times the world size)."""
    from services.common.torch_utils import mfu
    if "flops" not in stats:
        return {}
    dev = stats["device"]
    out = mfu.mfu(stats["flops"] / cfg.world_size, stats["train_s"], stats["dtype"],
                  "cuda" if dev.startswith("cuda") else "cpu")
    return {**out, "model_flops": stats["flops"], "dtype": stats["dtype"], "torch_threads": torch.get_num_threads()}


def planned_steps(cfg: TrainConfig, n_examples: int) -> int:
    """Optimizer steps: max_steps, or epochs over the data (the Trainer's own arithmetic)."""
    if cfg.max_steps:
        return cfg.max_steps
    micro_batches = math.ceil(n_examples / (cfg.per_device_batch_size * cfg.world_size))
    return max(1, math.ceil(cfg.num_train_epochs * math.ceil(micro_batches / cfg.gradient_accumulation_steps)))


def quantization_info(cfg: TrainConfig) -> dict[str, Any]:
    tq, quant = cfg.training_quant, cfg.quant
    from services.common.contract.naming import QUANT_TAGS
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
