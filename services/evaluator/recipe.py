"""The evaluation recipe, read top to bottom: batched greedy generation with the shared task
prompts, stopping as soon as the ``\\boxed{...}`` answer has closed, then the study's metrics.
Runs in the job's child process."""
from __future__ import annotations

import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from services.common import artifacts, data_import, modeling, tasks
from services.common.runtime import JobContext
from services.evaluator import metrics as task_metrics

SCORERS = {"mcq4": task_metrics.score_mcq4, "squad_v2": task_metrics.score_squad_v2,
           "math_numeric": task_metrics.score_numeric}


def run(ctx: JobContext, cfg: dict[str, Any]) -> dict[str, Any]:
    t_start = time.time()
    dev = modeling.device()
    modeling.reset_peak_memory()
    torch.manual_seed(cfg["seed"])
    ctx.log(f"fetching {cfg['model']}")
    model_dir, manifest = modeling.fetch_model(ctx.store, cfg["model"], ctx.workdir)
    tok = modeling.load_tokenizer(model_dir, padding_side="left")  # left padding for batched generation
    model = modeling.load_causal_lm(model_dir, dev)

    items = []  # (task, row) for every item, so progress covers the whole job
    for t in cfg["tasks"]:
        task = tasks.get_task(t["task"])
        df = data_import.load_split(ctx.store, t["dataset"], t["split"])
        data_import.validate_columns(task, df)
        if t["limit"]:
            df = df.head(t["limit"])
        items += [(task, row) for row in df.to_dict("records")]

    per_task: dict[str, list[dict]] = {}
    done = 0
    t_gen = time.time()
    for task_name in dict.fromkeys(task.name for task, _ in items):
        rows = [row for task, row in items if task.name == task_name]
        task = tasks.get_task(task_name)
        preds: list[dict] = []
        for i in range(0, len(rows), cfg["batch_size"]):
            batch = rows[i: i + cfg["batch_size"]]
            preds += generate_batch(model, tok, task, batch, cfg["max_new_tokens"], dev)
            done += len(batch)
            ok = sum(p["parsed"] is not None and p["parsed"] == p["gold"] for p in preds)
            ctx.progress(done, len(items), {f"{task.name}__running_accuracy": 100.0 * ok / len(preds)},
                         message=f"{task.name}: {len(preds)}/{len(rows)}")
        per_task[task_name] = preds
    gen_s = time.time() - t_gen

    # Scores in the study's layout, plus throughput and memory.
    memory = modeling.peak_memory()
    datasets_out, pred_rows, job_metrics = {}, [], {}
    for task_name, preds in per_task.items():
        task = tasks.get_task(task_name)
        score = SCORERS[task.type.value]([p["parsed"] for p in preds], [p["gold"] for p in preds])
        correct = score.pop("correct")
        n_ok = int(sum(correct))
        datasets_out[task_name] = {
            "type": task.type.value, "total_samples": len(preds),
            "format_success_rate": score.pop("format_success_rate"), "correct": n_ok,
            "incorrect": len(preds) - n_ok, "accuracy": round(100.0 * n_ok / max(len(preds), 1), 2),
            "metrics": {"task": task.title, **score},
            "latency_seconds": describe([p["latency_s"] for p in preds], 4),
            "tokens_generated": describe([p["generated_tokens"] for p in preds], 2),
        }
        for p, c in zip(preds, correct):
            pred_rows.append({"task": task_name, **{k: p[k] for k in (
                "id", "prompt_sha256", "output", "parsed", "gold", "latency_s", "prompt_tokens",
                "generated_tokens")}, "correct": bool(c)})
        d = datasets_out[task_name]
        job_metrics |= {f"{task_name}__accuracy": d["accuracy"],
                        f"{task_name}__format_success_rate": d["format_success_rate"],
                        f"{task_name}__latency_mean_s": d["latency_seconds"]["mean"]}
        job_metrics |= {f"{task_name}__{k}": float(v) for k, v in score.items()
                        if isinstance(v, (int, float)) and k != "support"}

    all_preds = [p for preds in per_task.values() for p in preds]
    total_ok = sum(d["correct"] for d in datasets_out.values())
    n_gen = sum(p["generated_tokens"] for p in all_preds)
    quantization = manifest.get("quantization", {"method": "NoQuant", "quant_tag": "NoQuant"})
    uri = f"s3://evaluations/{cfg['model']}/{cfg['eval_id']}/"
    result = {
        "model_name": cfg["model"], "eval_id": cfg["eval_id"],
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "summary": {
            "num_datasets": len(datasets_out), "total_samples": len(all_preds), "total_correct": total_ok,
            "total_incorrect": len(all_preds) - total_ok,
            "overall_accuracy": round(100.0 * total_ok / max(len(all_preds), 1), 2),
            "latency_seconds": describe([p["latency_s"] for p in all_preds], 4),
            "tokens_generated": describe([p["generated_tokens"] for p in all_preds], 2),
            "quantization": quantization,
            "peak_vram_reserved_gb": memory["peak_vram_reserved_gb"],
            "peak_vram_allocated_gb": memory["peak_vram_allocated_gb"], "peak_rss_gb": memory["peak_rss_gb"],
            "throughput": {"tokens_per_s": round(n_gen / max(gen_s, 1e-9), 2),
                           "samples_per_s": round(len(all_preds) / max(gen_s, 1e-9), 4),
                           "generation_s": round(gen_s, 3), "wall_time_s": round(time.time() - t_start, 3)},
        },
        "datasets": datasets_out,
        "quantization": {**quantization, "source": "model_manifest"},
        "hardware": {**modeling.hardware(), **memory},
        "spec": cfg, "predictions_uri": uri + "predictions.parquet", "versions": modeling.library_versions(),
    }
    out = Path(ctx.workdir) / "eval"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    pd.DataFrame(pred_rows).to_parquet(out / "predictions.parquet", index=False)
    artifacts.commit_dir(ctx.store, "evaluations", f"{cfg['model']}/{cfg['eval_id']}", out, {
        "kind": "evaluation", "model": cfg["model"], "eval_id": cfg["eval_id"], "parents": [cfg["model"]],
        "model_manifest_sha": artifacts.manifest_digest(manifest), "tasks": [t["task"] for t in cfg["tasks"]],
        "spec": cfg, "versions": modeling.library_versions(), "git_commit": modeling.git_commit()})
    job_metrics |= {"overall_accuracy": result["summary"]["overall_accuracy"],
                    "tokens_per_s": result["summary"]["throughput"]["tokens_per_s"],
                    "samples_per_s": result["summary"]["throughput"]["samples_per_s"],
                    "peak_rss_gb": memory["peak_rss_gb"], "peak_vram_reserved_gb": memory["peak_vram_reserved_gb"],
                    "peak_vram_allocated_gb": memory["peak_vram_allocated_gb"]}
    return {"outputs": {"evaluation": uri, "metrics": uri + "metrics.json",
                        "predictions": uri + "predictions.parquet"}, "metrics": job_metrics}


class BoxedAnswerClosed:
    """Per-row stop: a row is done once its generated text holds a closed ``\\boxed{...}``."""

    def __init__(self, tok, prompt_len: int):
        self.tok, self.prompt_len = tok, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i in range(input_ids.shape[0]):
            if "}" in self.tok.decode(input_ids[i, -1:]):  # only a '}' can close the answer
                done[i] = tasks.answer_closed(self.tok.decode(input_ids[i, self.prompt_len:], skip_special_tokens=True))
        return done


def generate_batch(model, tok, task, rows: list[dict], max_new_tokens: int, dev) -> list[dict]:
    prompts = [tok.apply_chat_template(tasks.build_messages(task, row), add_generation_prompt=True,
                                       enable_thinking=False, tokenize=False) for row in rows]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
    width = enc["input_ids"].shape[1]
    t0 = time.time()
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, top_p=None, top_k=None,
                             temperature=None, stopping_criteria=[BoxedAnswerClosed(tok, width)],
                             pad_token_id=tok.pad_token_id)
    latency = time.time() - t0  # the batch's wall time: what each of its requests waited
    stop_ids = set(_eos_ids(model)) | {tok.pad_token_id}
    results = []
    for i, row in enumerate(rows):
        gen = out[i, width:].tolist()
        n = next((j + 1 for j, t in enumerate(gen) if t in stop_ids), len(gen))  # the stop token counts
        text = tok.decode(gen[:n], skip_special_tokens=True)
        results.append({"id": str(row["id"]), "prompt_sha256": hashlib.sha256(prompts[i].encode()).hexdigest()[:16],
                        "output": text, "parsed": tasks.parse_answer(task, text),
                        "gold": tasks.gold_answer(task, row), "latency_s": latency,
                        "prompt_tokens": int(enc["attention_mask"][i].sum()), "generated_tokens": n})
    return results


def _eos_ids(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


def describe(values: list[float], digits: int) -> dict[str, Any]:
    """The study's per-task statistics block (per_prompt, sum, mean, median, mode, std) plus p90."""
    if not values:
        return {"per_prompt": [], "sum": 0, "mean": 0, "median": 0, "mode": 0, "std": 0, "p90": 0}
    r = lambda x: round(float(x), digits)  # noqa: E731
    return {"per_prompt": [r(v) for v in values], "sum": r(sum(values)), "mean": r(np.mean(values)),
            "median": r(np.median(values)), "mode": r(statistics.mode([r(v) for v in values])),
            "std": r(np.std(values)), "p90": r(np.percentile(values, 90))}
