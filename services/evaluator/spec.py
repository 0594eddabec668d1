"""EvaluateSpec validation at the door (every problem at once; nothing written)."""
from __future__ import annotations

import importlib.util
from typing import Any

from services.common import artifacts
from services.common.errors import PreconditionError, ValidationError, quote
from services.common.job_record import spec_hash
from services.common.naming import check_name
from services.common.storage import ObjectStore
from services.common.tasks import get_task, required_columns
from services.common.validation import Problems, in_range, split_rows, task_mismatch
from services.evaluator.kv_cache import KV_CACHE_DTYPES

ENGINES = ("auto", "hf", "vllm")  # generation engines (services/evaluator/engines.py)


def resolve_evaluate_spec(spec: dict[str, Any], store: ObjectStore) -> dict[str, Any]:
    p = Problems()
    blocked = ""  # FAILED_PRECONDITION: the model exists but cannot be evaluated
    model = spec.get("model", "")
    p.require(bool(model), "model: required") and p.add(check_name("model", model))
    batch_size = in_range(p, spec, "batch_size", 8, 1, 512)
    max_new = in_range(p, spec, "max_new_tokens", 1000, 1, 32768)
    seed = in_range(p, spec, "seed", 0, 0, 2**31 - 1)
    n_boot = in_range(p, spec, "bootstrap_samples", 1000, 100, 100_000)
    engine = spec.get("engine") or "auto"
    p.require(engine in ENGINES, f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    p.require(engine != "vllm" or importlib.util.find_spec("vllm") is not None,
              "engine: 'vllm' requested but vLLM is not installed in the evaluator's environment")
    engine_check = in_range(p, spec, "engine_check", 0, 0, 1_000_000)
    kv_cache = spec.get("kv_cache_dtype") or "auto"
    p.require(kv_cache in KV_CACHE_DTYPES, f"kv_cache_dtype: unknown {str(kv_cache)[:40]!r}; known: {', '.join(KV_CACHE_DTYPES)}")
    p.require(kv_cache == "auto" or engine != "vllm",
              "kv_cache_dtype: a quantized KV cache runs on HF generate; it cannot be combined with engine 'vllm'")
    p.require(bool(spec.get("tasks")), "tasks: at least one task is required")
    tasks = []
    for i, t in enumerate(spec.get("tasks", [])):
        where = f"tasks[{i}]"
        limit = t.get("limit")  # checked before the task, so an unknown task does not hide a bad limit
        p.require(limit is None or 1 <= limit <= 1_000_000, f"{where}.limit: {limit} must be in [1, 1000000]")
        try:
            task = get_task(t.get("task", ""))
        except ValidationError as exc:
            p.invalid.append(f"{where}.task: {exc}")
            continue
        dataset, split = t.get("dataset") or task.short, t.get("split") or "test"
        p.add(check_name(f"{where}.dataset", dataset))
        ds = artifacts.read_manifest(store, "datasets", dataset) if not check_name("d", dataset) else None
        if ds is None:
            p.not_found(f"{where}.dataset: {dataset!r} not found in the datasets bucket")
        elif split not in ds.get("splits", {}):
            p.invalid.append(f"{where}.split: dataset {dataset!r} has no split {split!r} "
                             f"(has: {', '.join(sorted(ds.get('splits', {})))})")
        else:
            cols = set(ds["splits"][split].get("columns", []))
            missing = [c for c in required_columns(task) if c not in cols]
            p.require(not missing, f"{where}.dataset: {dataset!r} lacks the {task.name} columns {missing}")
            p.add(task_mismatch(f"{where}.task", task.name, dataset, ds))
            p.add(split_rows(f"{where}.limit" if limit else f"{where}.split", dataset, ds, split, limit))
        tasks.append({"task": task.name, "dataset": dataset, "split": split, "limit": limit})
    names = [t["task"] for t in tasks]
    p.require(len(names) == len(set(names)), f"tasks: each task at most once (got {names})")
    if model and not p.invalid:
        manifest = artifacts.read_manifest(store, "models", model)
        if manifest is None:
            p.not_found(f"model: {model!r} not found in the models bucket")
        elif manifest.get("merged") is False and manifest.get("adapter_path"):  # adapter-only: needs its base
            base = manifest.get("base_model") or next(iter(manifest.get("parents") or []), None)
            if not base or artifacts.read_manifest(store, "models", base) is None:
                p.not_found(f"model: {model!r} is an adapter whose base model {base!r} is not in the models bucket")
        elif "config.json" not in {f.get("path") for f in manifest.get("files", [])}:
            blocked = f"model: {quote(model)} holds no model weights (no config.json) and no adapter"
    eval_id = spec.get("eval_id", "")
    if eval_id:
        p.add(check_name("eval_id", eval_id))
    p.raise_if_any()
    if blocked:
        raise PreconditionError(blocked)
    cfg = {"model": model, "tasks": tasks, "batch_size": batch_size, "max_new_tokens": max_new, "seed": seed,
           "bootstrap_samples": n_boot}
    if engine != "auto" or engine_check:  # absent when default: earlier evaluations keep their ids
        cfg |= {"engine": engine, "engine_check": engine_check}
    if kv_cache != "auto":  # only when set, so the default spec keeps its eval_id
        cfg["kv_cache_dtype"] = kv_cache
    cfg["eval_id"] = eval_id or "eval-" + spec_hash(cfg)
    if artifacts.read_manifest(store, "evaluations", f"{model}/{cfg['eval_id']}") is not None:
        raise PreconditionError(f"evaluation {model}/{cfg['eval_id']} already exists")
    return cfg
