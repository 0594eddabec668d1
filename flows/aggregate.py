"""Aggregation: one row per evaluated model, the study's columns first (exact names and units),
then ours. Reads evaluations and training metadata from storage alone."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from services.common import artifacts
from services.common.errors import NotFoundError
from services.common.storage import ObjectStore

# The header of the study's metrics_summary.csv: our CSV starts with exactly these columns.
STUDY_COLUMNS = [
    "model", "train_peak_vram_reserved_gb", "train_peak_vram_allocated_gb", "eval_peak_vram_reserved_gb",
    "eval_peak_vram_allocated_gb", "ai2_arc__macro_f1", "ai2_arc__latency_mean_s",
    "OpenMathInstruct-2__avg_abs_diff", "OpenMathInstruct-2__latency_mean_s", "squad_v2__F1",
    "squad_v2__latency_mean_s",
]
# Per task: the headline metric of the study and ours (key in metrics.json's datasets.<task>.metrics).
TASK_EXTRA = {"ai2_arc": ["accuracy"], "squad_v2": ["EM", "accuracy"], "OpenMathInstruct-2": ["accuracy", "median_abs_diff"]}
OUR_COLUMNS = ["train_peak_rss_gb", "eval_peak_rss_gb", "eval_tokens_per_s", "eval_samples_per_s",
               "method", "rank", "quant_tag", "parent_model", "eval_id"]


def _json(store: ObjectStore, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes(bucket, key))
    except NotFoundError:
        return None


def summary_row(store: ObjectStore, model: str, eval_id: str) -> dict[str, Any]:
    ev = artifacts.get_json(store, "evaluations", f"{model}/{eval_id}/metrics.json")
    manifest = artifacts.read_manifest(store, "models", model) or {}
    train = _json(store, "models", f"{model}/training_metadata.json") or {}
    tmem = train.get("memory", {})
    s = ev["summary"]
    row: dict[str, Any] = {
        "model": model,
        "train_peak_vram_reserved_gb": tmem.get("peak_vram_reserved_gb", 0.0),
        "train_peak_vram_allocated_gb": tmem.get("peak_vram_allocated_gb", 0.0),
        "eval_peak_vram_reserved_gb": s.get("peak_vram_reserved_gb", 0.0),
        "eval_peak_vram_allocated_gb": s.get("peak_vram_allocated_gb", 0.0),
    }
    for task, d in ev["datasets"].items():
        m = d["metrics"]
        headline = {"ai2_arc": "macro_f1", "squad_v2": "F1", "OpenMathInstruct-2": "avg_abs_diff"}.get(task)
        if headline:
            row[f"{task}__{headline}"] = m.get(headline)
        row[f"{task}__latency_mean_s"] = d["latency_seconds"]["mean"]
        row[f"{task}__accuracy"] = d["accuracy"]
        row[f"{task}__format_success_rate"] = d["format_success_rate"]
        for k in TASK_EXTRA.get(task, []):
            if k in m:
                row[f"{task}__{k}"] = m[k]
        for k, (lo, hi) in (m.get("ci95") or {}).items():
            row[f"{task}__{k}__ci95_low"], row[f"{task}__{k}__ci95_high"] = lo, hi
    spec = manifest.get("spec", {})
    row |= {"train_peak_rss_gb": tmem.get("peak_rss_gb"), "eval_peak_rss_gb": s.get("peak_rss_gb"),
            "eval_tokens_per_s": s.get("throughput", {}).get("tokens_per_s"),
            "eval_samples_per_s": s.get("throughput", {}).get("samples_per_s"),
            "method": spec.get("peft_method") or spec.get("method") or manifest.get("kind"),
            "rank": (spec.get("lora") or {}).get("r") if spec.get("peft_method") else None,
            "quant_tag": manifest.get("quantization", {}).get("quant_tag", "NoQuant"),
            "parent_model": ",".join(manifest.get("parents", [])), "eval_id": eval_id}
    return row


def summary_table(store: ObjectStore, evaluations: list[tuple[str, str]]) -> pd.DataFrame:
    df = pd.DataFrame([summary_row(store, m, e) for m, e in evaluations])
    for c in STUDY_COLUMNS:
        if c not in df.columns:
            df[c] = math.nan
    rest = [c for c in df.columns if c not in STUDY_COLUMNS and c not in OUR_COLUMNS]
    return df[STUDY_COLUMNS + sorted(rest) + [c for c in OUR_COLUMNS if c in df.columns]]


def write_report(store: ObjectStore, experiment: str, run_id: str, table: pd.DataFrame,
                 steps: list[dict[str, Any]], local_dir: str | Path) -> dict[str, Any]:
    """metrics_summary.csv + report.md under reports/<experiment>/<run_id>/ (manifest last),
    and the same files in ``local_dir``."""
    out = Path(local_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "metrics_summary.csv", index=False)
    failed = [s for s in steps if s["status"] == "failed"]
    lines = [f"# {experiment} — run {run_id}", "", "## Summary", "",
             table[[c for c in ["model", "ai2_arc__macro_f1", "ai2_arc__accuracy", "ai2_arc__format_success_rate",
                                "ai2_arc__latency_mean_s", "squad_v2__F1", "OpenMathInstruct-2__avg_abs_diff"]
                    if c in table.columns]].to_markdown(index=False) if len(table) else "(no evaluations)",
             "", "## Steps", "", "| step | status | job | detail |", "|---|---|---|---|"]
    lines += [f"| {s['key']} | {s['status']} | {s.get('job_id', '')} | {s.get('error', '')} |" for s in steps]
    lines += ["", f"## Failures ({len(failed)})", ""] + [f"- `{s['key']}`: {s['error']}" for s in failed]
    lines += ["", "## Reproduce", "", f"    ftlab run {experiment}", f"    ftlab report {experiment} --run {run_id}"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "steps.json").write_text(json.dumps(steps, indent=2))
    prefix = f"{experiment}/{run_id}"
    manifest = artifacts.commit_dir(store, "reports", prefix, out, {"kind": "report", "experiment": experiment,
                                                                    "run_id": run_id}, overwrite=True)
    return {"uri": manifest["uri"], "local_dir": str(out.resolve())}
