"""TrainSpec validation at the door: every problem reported at once, defaults resolved into the
config the training child runs, the memory estimate checked against the device budget. Nothing
is written here. Torch-free: the flows import the registries below."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from services.common import artifacts
from services.common.errors import NotFoundError, PreconditionError, ValidationError, quote
from services.common.naming import PEFT_TAGS, QuantMethod, check_name, trained_model_name
from services.common.storage import ObjectStore
from services.common.tasks import get_task, required_columns
from services.common.validation import (Problems, check_module_names, in_range, model_weights_problem, split_rows,
                                        task_mismatch)

# PEFT method -> what it is (each has the study's name fragment in naming.PEFT_TAGS).
PEFT_METHODS = {
    "lora": "LoRA: low-rank update B·A on the target modules",
    "dora": "DoRA: LoRA plus a learned magnitude per output (weight decomposition)",
    "vera": "VeRA: frozen shared random projections, trained scaling vectors d and b",
    "none": "full fine-tuning: every weight trains (name fragment NoPeft)",
}
# Training-time quantization of the base -> the study's QuantMethod (the name tag).
TRAINING_QUANT = {"none": QuantMethod.NO_QUANT, "qlora": QuantMethod.QLORA, "int8": QuantMethod.INT8}
# Optimizer -> transformers' `optim` name; the 8-bit ones need bitsandbytes' CUDA kernels.
OPTIMIZERS = {"adamw_torch": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit",
              "paged_adamw_8bit": "paged_adamw_8bit", "adafactor": "adafactor", "sgd": "sgd"}
GPU_ONLY_OPTIMIZERS = {"adamw_8bit", "paged_adamw_8bit"}
LR_SCHEDULERS = ("linear", "cosine", "constant_with_warmup")
RESUME = ("auto", "never")
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
CHECKPOINTS_PREFIX = "checkpoints/trainer"  # in the `jobs` bucket; job records live under trainer/


def target_device() -> str:
    """Where this trainer's jobs run, known without torch: FTLAB_DEVICE (cpu | cuda[:N]), else
    cuda when the NVIDIA driver's device node exists."""
    want = os.environ.get("FTLAB_DEVICE", "auto")
    if want != "auto":
        return "cuda" if want.startswith("cuda") else "cpu"
    return "cuda" if Path("/dev/nvidiactl").exists() else "cpu"


def device_budget_gb() -> float | None:
    raw = os.environ.get("FTLAB_DEVICE_MEMORY_GB", "")
    try:
        return float(raw) if raw else None
    except ValueError:
        raise PreconditionError(f"FTLAB_DEVICE_MEMORY_GB={raw!r} is not a number (GiB per device)") from None


def _adapter_block(p: Problems, spec: dict[str, Any], peft: str) -> dict[str, Any] | None:
    block = spec.get("lora") or {}
    if peft == "none":
        p.require(not block, "lora: adapter settings given but peft_method is 'none' (full fine-tuning)")
        return None
    r = block.get("r", 8)
    p.require(1 <= r <= 4096, f"lora.r: {r} must be in [1, 4096]")
    dropout = block.get("dropout", 0.05)
    p.require(0 <= dropout < 1, f"lora.dropout: {dropout} must be in [0, 1)")
    targets = list(block.get("target_modules") or DEFAULT_TARGETS)
    check_module_names(p, "lora.target_modules", targets)
    out: dict[str, Any] = {"r": r, "dropout": dropout, "target_modules": targets}
    if peft == "vera":
        p.require("alpha" not in block, "lora.alpha: VeRA has no alpha (its scaling is the trained vectors)")
        out["d_initial"] = block.get("d_initial", 0.1)
        p.require(0 < out["d_initial"] <= 10, f"lora.d_initial: {out['d_initial']} must be in (0, 10]")
    else:
        p.require("d_initial" not in block, "lora.d_initial: VeRA only")
        out["alpha"] = block.get("alpha", 2 * max(r, 1))
        p.require(out["alpha"] > 0, f"lora.alpha: {out['alpha']} must be > 0")
    return out


def _choice(p: Problems, spec: dict, field: str, known, default: str) -> str:
    value = spec.get(field) or default
    p.require(value in known, f"{field}: unknown {quote(value)}; known: {', '.join(known)}")
    return value


def resolve_train_spec(spec: dict[str, Any], store: ObjectStore) -> dict[str, Any]:
    p = Problems()
    base, dataset = spec.get("base_model", ""), spec.get("dataset", "")
    p.require(bool(base), "base_model: required") and p.add(check_name("base_model", base))
    p.require(bool(dataset), "dataset: required") and p.add(check_name("dataset", dataset))

    peft = _choice(p, spec, "peft_method", PEFT_METHODS, "lora")
    tq = _choice(p, spec, "training_quant", TRAINING_QUANT, "none")
    lora = _adapter_block(p, spec, peft if peft in PEFT_METHODS else "lora")  # checked even when the method is unknown

    cfg: dict[str, Any] = {
        "base_model": base, "dataset": dataset, "peft_method": peft, "training_quant": tq, "lora": lora,
        "max_steps": in_range(p, spec, "max_steps", 0, 0, 1_000_000) if "max_steps" in spec else 0,
        "num_train_epochs": in_range(p, spec, "num_train_epochs", 1.0, 0, 100, lo_open=True),
        "per_device_batch_size": in_range(p, spec, "per_device_batch_size", 4, 1, 1024),
        "gradient_accumulation_steps": in_range(p, spec, "gradient_accumulation_steps", 2, 1, 1024),
        "learning_rate": in_range(p, spec, "learning_rate", 2e-4, 0, 1, lo_open=True),
        "weight_decay": in_range(p, spec, "weight_decay", 0.0, 0, 1),
        "warmup_ratio": in_range(p, spec, "warmup_ratio", 0.03, 0, 1),
        "max_grad_norm": in_range(p, spec, "max_grad_norm", 1.0, 0, 1e6, lo_open=True),
        "max_seq_length": in_range(p, spec, "max_seq_length", 1024, 16, 131072),
        "seed": in_range(p, spec, "seed", 42, 0, 2**31 - 1),
        "merge_after_train": spec.get("merge_after_train", True),
        "train_limit": in_range(p, spec, "train_limit", 0, 0, 10_000_000),
        "gradient_checkpointing": spec.get("gradient_checkpointing", False),
        "save_steps": in_range(p, spec, "save_steps", 50, 0, 1_000_000),
        "resume": _choice(p, spec, "resume", RESUME, "auto"),
        "optimizer": _choice(p, spec, "optimizer", OPTIMIZERS, "adamw_torch"),
        "packing": spec.get("packing", True),
        "group_by_length": spec.get("group_by_length", False),
        "completion_only_loss": spec.get("completion_only_loss", True),
        "lr_scheduler": _choice(p, spec, "lr_scheduler", LR_SCHEDULERS, "linear"),
        "world_size": in_range(p, spec, "world_size", 1, 1, 64),
        "logging_steps": in_range(p, spec, "logging_steps", 1, 1, 100_000),
        "device_type": target_device(),
    }
    if "max_steps" in spec and cfg["max_steps"] == 0:
        p.invalid.append("max_steps: 0 must be > 0 (leave it unset to train by epochs)")
    if cfg["packing"] and cfg["group_by_length"]:
        p.invalid.append("group_by_length: packing already removes padding; set packing false to group by length")

    task_name = spec.get("task", "")
    base_manifest = artifacts.read_manifest(store, "models", base) if base and not p.invalid else None
    if base and not p.invalid and base_manifest is None:
        p.not_found(f"base_model: model {base!r} not found in the models bucket")
    weights = model_weights_problem("base_model", base, base_manifest, "training") if base_manifest else None
    ds_manifest = artifacts.read_manifest(store, "datasets", dataset) if dataset and not p.invalid else None
    if dataset and not p.invalid and ds_manifest is None:
        p.not_found(f"dataset: {dataset!r} not found in the datasets bucket")
    if ds_manifest is not None:
        if task_name:  # the requested task must be the one the dataset was imported for
            p.add(task_mismatch("task", task_name, dataset, ds_manifest))
        task_name = task_name or ds_manifest.get("task", "")
        if "train" not in ds_manifest.get("splits", {}):
            p.invalid.append(f"dataset: {dataset!r} has no train split")
        else:
            p.add(split_rows("train_limit" if cfg["train_limit"] else "dataset", dataset, ds_manifest, "train",
                             cfg["train_limit"]))
    try:
        task = get_task(task_name or dataset)
        cfg["task"] = task.name
        if ds_manifest is not None:
            cols = set(ds_manifest.get("splits", {}).get("train", {}).get("columns", []))
            missing = [c for c in required_columns(task) if c not in cols]
            p.require(not missing, f"dataset: {dataset!r} lacks the {task.name} columns {missing}")
    except ValidationError as exc:
        p.invalid.append(f"task: {exc}")

    named = peft in PEFT_METHODS and tq in TRAINING_QUANT
    out = spec.get("output_name") or (trained_model_name(base, dataset, peft, lora and lora["r"], TRAINING_QUANT[tq])
                                      if base and named else "")
    if spec.get("output_name"):
        p.add(check_name("output_name", out))
    cfg["output_name"] = out
    p.raise_if_any()
    if weights:
        raise PreconditionError(weights)

    _check_preconditions(cfg)
    if artifacts.read_manifest(store, "models", out) is not None:
        raise PreconditionError(f"output model {out!r} already exists; choose another output_name "
                                "or delete it first")
    cfg["checkpoint_prefix"] = f"{CHECKPOINTS_PREFIX}/{out}-{run_key(cfg)}"
    _attach_memory_estimate(cfg, store)
    return cfg


def _check_preconditions(cfg: dict[str, Any]) -> None:
    """Well-formed requests that cannot run, each with the reason (FAILED_PRECONDITION)."""
    reasons = []
    if cfg["peft_method"] == "none" and cfg["training_quant"] != "none":
        reasons.append(f"peft_method 'none' with training_quant {cfg['training_quant']!r}: full fine-tuning "
                       "cannot update bitsandbytes-quantized weights (they are frozen integer blocks); train an "
                       "adapter (lora, dora, vera) on the quantized base, or use training_quant 'none'")
    if cfg["optimizer"] in GPU_ONLY_OPTIMIZERS and cfg["device_type"] != "cuda":
        reasons.append(f"optimizer {cfg['optimizer']!r} needs a CUDA GPU (bitsandbytes' 8-bit optimizer "
                       "kernels); this trainer runs on CPU: use adamw_torch, adafactor or sgd")
    if reasons:
        raise PreconditionError("; ".join(reasons))


def run_key(cfg: dict[str, Any]) -> str:
    """Identifies a training run across attempts and resubmissions: the same settings resume
    the same checkpoints; different settings never do."""
    keep = {k: v for k, v in cfg.items() if k not in ("resume", "save_steps", "logging_steps", "device_type")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


def _attach_memory_estimate(cfg: dict[str, Any], store: ObjectStore) -> None:
    from services.trainer.memory import estimate_training_memory, model_config_for
    try:
        model_config = model_config_for(cfg["base_model"], store)
    except NotFoundError:
        cfg["memory_estimate"], cfg["memory_estimate_gb"] = None, 0.0
        return
    try:
        est = estimate_training_memory(model_config, cfg)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):  # a config.json this estimator can't read
        cfg["memory_estimate"], cfg["memory_estimate_gb"] = None, 0.0
        return
    cfg["memory_estimate"], cfg["memory_estimate_gb"] = est, est["total_gb"]
    budget = device_budget_gb()
    if budget is not None and est["total_gb"] > budget:
        parts = ", ".join(f"{k[:-3]} {v:.2f}" for k, v in est.items() if k.endswith("_gb") and k != "total_gb")
        raise PreconditionError(
            f"estimated training memory {est['total_gb']:.2f} GiB per device exceeds the device budget "
            f"FTLAB_DEVICE_MEMORY_GB={budget:g} ({parts} GiB); lower per_device_batch_size or max_seq_length, "
            "enable gradient_checkpointing, use training_quant qlora, or a smaller r")
