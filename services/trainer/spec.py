"""TrainSpec validation at the door: every problem reported at once, defaults resolved into the
config the training child runs. Nothing is written here."""
from __future__ import annotations

from typing import Any

from services.common import artifacts
from services.common.naming import QuantMethod, check_name, trained_model_name
from services.common.storage import ObjectStore
from services.common.tasks import get_task
from services.common.errors import ValidationError
from services.common.validation import Problems, in_range

# The PEFT methods this trainer runs, each with the study's name fragment in naming.PEFT_TAGS.
PEFT_METHODS = ("lora",)
TRAINING_QUANT = {"none": QuantMethod.NO_QUANT}
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def resolve_train_spec(spec: dict[str, Any], store: ObjectStore) -> dict[str, Any]:
    p = Problems()
    base, dataset = spec.get("base_model", ""), spec.get("dataset", "")
    p.require(bool(base), "base_model: required") and p.add(check_name("base_model", base))
    p.require(bool(dataset), "dataset: required") and p.add(check_name("dataset", dataset))

    peft = spec.get("peft_method") or "lora"
    p.require(peft in PEFT_METHODS, f"peft_method: unknown {peft!r}; known: {', '.join(PEFT_METHODS)}")
    tq = spec.get("training_quant") or "none"
    p.require(tq in TRAINING_QUANT, f"training_quant: unknown {tq!r}; known: {', '.join(TRAINING_QUANT)}")

    lora_in = spec.get("lora", {})
    r = lora_in.get("r", 8)
    p.require(1 <= r <= 4096, f"lora.r: {r} must be in [1, 4096]")
    alpha = lora_in.get("alpha", 2 * max(r, 1))
    p.require(alpha > 0, f"lora.alpha: {alpha} must be > 0")
    dropout = lora_in.get("dropout", 0.05)
    p.require(0 <= dropout < 1, f"lora.dropout: {dropout} must be in [0, 1)")
    targets = lora_in.get("target_modules") or DEFAULT_TARGETS
    p.require(all(t.strip() for t in targets), "lora.target_modules: names must be non-empty")
    if "all-linear" in targets and len(targets) > 1:
        p.invalid.append("lora.target_modules: 'all-linear' stands alone")

    cfg: dict[str, Any] = {
        "base_model": base, "dataset": dataset, "peft_method": peft, "training_quant": tq,
        "lora": {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": list(targets)},
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
    }
    if "max_steps" in spec and cfg["max_steps"] == 0:
        p.invalid.append("max_steps: 0 must be > 0 (leave it unset to train by epochs)")

    task_name = spec.get("task", "")
    if base and not p.invalid and artifacts.read_manifest(store, "models", base) is None:
        p.not_found(f"base_model: model {base!r} not found in the models bucket")
    ds_manifest = artifacts.read_manifest(store, "datasets", dataset) if dataset and not p.invalid else None
    if dataset and not p.invalid and ds_manifest is None:
        p.not_found(f"dataset: {dataset!r} not found in the datasets bucket")
    if ds_manifest is not None:
        task_name = task_name or ds_manifest.get("task", "")
        if "train" not in ds_manifest.get("splits", {}):
            p.invalid.append(f"dataset: {dataset!r} has no train split")
    try:
        task = get_task(task_name or dataset)
        cfg["task"] = task.name
        if ds_manifest is not None:
            cols = set(ds_manifest.get("splits", {}).get("train", {}).get("columns", []))
            missing = [c for c in task.columns if c not in cols]
            p.require(not missing, f"dataset: {dataset!r} lacks the {task.name} columns {missing}")
    except ValidationError as exc:
        p.invalid.append(f"task: {exc}")

    out = spec.get("output_name") or (trained_model_name(base, dataset, peft, r, TRAINING_QUANT[tq])
                                      if base and peft in PEFT_METHODS and tq in TRAINING_QUANT else "")
    if spec.get("output_name"):
        p.add(check_name("output_name", out))
    if out and not p.invalid and artifacts.read_manifest(store, "models", out) is not None:
        from services.common.errors import PreconditionError
        p.raise_if_any()
        raise PreconditionError(f"output model {out!r} already exists; choose another output_name "
                                "or delete it first")
    cfg["output_name"] = out
    p.raise_if_any()
    return cfg
