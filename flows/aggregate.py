"""Aggregation: one row per evaluated model, the study's columns first (exact names and units),
then ours. Reads evaluations, model manifests and training metadata from storage alone."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from services.common.storage import artifacts
from services.common.contract.errors import NotFoundError, ValidationError
from services.common.storage.store import ObjectStore
from services.common.data.tasks import TaskDef, get_task, list_tasks

# The header of the study's metrics_summary.csv: our CSV starts with exactly these columns.
STUDY_COLUMNS = [
    "model", "train_peak_vram_reserved_gb", "train_peak_vram_allocated_gb", "eval_peak_vram_reserved_gb",
    "eval_peak_vram_allocated_gb", "ai2_arc__macro_f1", "ai2_arc__latency_mean_s",
    "OpenMathInstruct-2__avg_abs_diff", "OpenMathInstruct-2__latency_mean_s", "squad_v2__F1",
    "squad_v2__latency_mean_s",
]
OUR_COLUMNS = ["train_peak_rss_gb", "eval_peak_rss_gb", "eval_tokens_per_s", "eval_samples_per_s",
               "train_time_s", "train_tokens_per_s", "train_dtype", "model_size_gb", "method", "rank", "training_quant",
               "ptq_method", "quant_tag", "parent_model", "base_model", "train_dataset", "eval_id"]


def task_headlines() -> dict[str, tuple[str, bool]]:
    """Per registered task: its headline metric (a key of metrics.json's ``datasets.<task>``
    block or of its ``metrics``) and whether higher is better: the first entry of the task YAML's
    ``metrics``. The study's scales: macro-F1 in [0, 1], SQuAD F1 in [0, 100]."""
    return {t.name: t.headline for t in list_tasks()}


def _task(name: str) -> TaskDef | None:
    try:
        return get_task(name)
    except ValidationError:  # an evaluation of a task no longer registered here: its generic columns only
        return None


def _json(store: ObjectStore, bucket: str, prefix: str, path: str) -> dict[str, Any] | None:
    try:
        return artifacts.read_json(store, bucket, prefix, path)  # sha256-checked
    except NotFoundError:
        return None


def model_facts(store: ObjectStore, model: str) -> dict[str, Any]:
    """What a model's manifest (and its source's, for a quantized one) says about how it was made:
    PEFT method, rank, training-time and post-training quantization, parent, size on disk."""
    manifest = artifacts.read_manifest(store, "models", model) or {}
    kind = manifest.get("kind", "base")
    spec = manifest.get("spec", {})
    facts: dict[str, Any] = {
        "model_size_gb": round(sum(f.get("size", 0) for f in manifest["files"]) / 1e9, 6) if manifest.get("files") else None,
        "quant_tag": manifest.get("quantization", {}).get("quant_tag", "NoQuant"),
        "parent_model": ",".join(manifest.get("parents", [])), "ptq_method": None,
        "method": "base", "rank": None, "training_quant": None, "base_model": model, "train_dataset": None,
    }
    source = manifest
    if kind == "quantized":
        facts["ptq_method"] = spec.get("method")
        parent = manifest.get("parents", [None])[0]
        source = (artifacts.read_manifest(store, "models", parent) or {}) if parent else {}
    src_spec = source.get("spec", {})
    if source.get("kind") == "trained":
        peft = src_spec.get("peft_method", "lora")
        facts |= {"method": "full" if peft == "none" else peft,
                  "rank": None if peft == "none" else (src_spec.get("lora") or {}).get("r"),
                  "training_quant": src_spec.get("training_quant", "none"),
                  "base_model": source.get("base_model"), "train_dataset": source.get("dataset")}
    elif kind == "quantized" and source:
        facts["base_model"] = manifest.get("parents", [model])[0]
    return facts


def summary_row(store: ObjectStore, model: str, eval_id: str) -> dict[str, Any]:
    ev = artifacts.read_json(store, "evaluations", f"{model}/{eval_id}", "metrics.json")
    train = _json(store, "models", model, "training_metadata.json") or {}
    tmem = train.get("memory", {})
    s = ev["summary"]
    # VRAM columns stay empty for a job that ran on no GPU (its 0.0 would read as "measured: none");
    # an untrained model keeps the study's training 0.0 where it was evaluated on a GPU.
    on_gpu_eval = str((ev.get("hardware") or {}).get("device", "cuda")).startswith("cuda")
    on_gpu_train = str(train.get("device", "cuda")).startswith("cuda") if train else on_gpu_eval
    row: dict[str, Any] = {
        "model": model,
        "train_peak_vram_reserved_gb": tmem.get("peak_vram_reserved_gb", 0.0) if on_gpu_train else None,
        "train_peak_vram_allocated_gb": tmem.get("peak_vram_allocated_gb", 0.0) if on_gpu_train else None,
        "eval_peak_vram_reserved_gb": s.get("peak_vram_reserved_gb", 0.0) if on_gpu_eval else None,
        "eval_peak_vram_allocated_gb": s.get("peak_vram_allocated_gb", 0.0) if on_gpu_eval else None,
    }
    for task, d in ev["datasets"].items():
        m = d["metrics"]
        row[f"{task}__latency_mean_s"] = d["latency_seconds"]["mean"]
        row[f"{task}__accuracy"] = d["accuracy"]
        row[f"{task}__format_success_rate"] = d["format_success_rate"]
        row[f"{task}__samples"] = d.get("total_samples")
        for k, _ in (t.metrics if (t := _task(task)) else ()):  # the task YAML's metrics, headline first
            if k in m:
                row[f"{task}__{k}"] = m[k]
        if "engine_check" in d:  # vLLM vs HF generate on the same first items (services/evaluator/engines.py)
            row[f"{task}__engine_parsed_agreement"] = d["engine_check"]["parsed_agreement"]
        for k, bounds in (m.get("ci95") or {}).items():
            if isinstance(bounds, (list, tuple)) and len(bounds) == 2:
                row[f"{task}__{k}__ci95_low"], row[f"{task}__{k}__ci95_high"] = bounds
                if k in m:  # a metric the YAML does not list (SQuAD's HasAns_F1) keeps its value beside its CI
                    row.setdefault(f"{task}__{k}", m[k])
    row |= study_profile_columns(ev)
    row |= {"train_peak_rss_gb": tmem.get("peak_rss_gb"), "eval_peak_rss_gb": s.get("peak_rss_gb"),
            "eval_tokens_per_s": s.get("throughput", {}).get("tokens_per_s"),
            "eval_samples_per_s": s.get("throughput", {}).get("samples_per_s"),
            "eval_engine": " ".join(str(e.get(k)) for k in ("name", "version", "dtype")) if (e := ev.get("engine")) else "hf",
            "train_time_s": train.get("train_time_s"), "train_tokens_per_s": train.get("tokens_per_s"),
            "train_dtype": train.get("dtype"),  # the training dtype auto resolved to (trainer/loop.py)
            **model_facts(store, model), "eval_id": eval_id}
    return row


def study_profile_columns(ev: dict[str, Any]) -> dict[str, Any]:
    """``<task>__<metric>__study``: the same generations scored by the study's scorer (metrics.json's
    ``study_profile``, absent in evaluations made before it existed): accuracy, format success
    and every number of its metrics block."""
    out: dict[str, Any] = {}
    for task, d in (ev.get("study_profile") or {}).get("datasets", {}).items():
        out[f"{task}__accuracy__study"] = d.get("accuracy")
        out[f"{task}__format_success_rate__study"] = d.get("format_success_rate")
        out |= {f"{task}__{k}__study": v for k, v in d.get("metrics", {}).items()
                if k != "support" and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))}
    return out


def summary_table(store: ObjectStore, evaluations: list[tuple[str, str]]) -> pd.DataFrame:
    """One row per model (its latest listed evaluation wins): the study's columns first, then the
    ``__study`` profile columns, then ours."""
    rows = {m: summary_row(store, m, e) for m, e in evaluations}
    df = pd.DataFrame(list(rows.values()))
    for c in STUDY_COLUMNS:
        if c not in df.columns:
            df[c] = math.nan
    study = sorted(c for c in df.columns if c.endswith("__study"))
    rest = [c for c in df.columns if c not in STUDY_COLUMNS and c not in OUR_COLUMNS and c not in study]
    return df[STUDY_COLUMNS + study + sorted(rest) + [c for c in OUR_COLUMNS if c in df.columns]]


def train_memory_gb(row: pd.Series) -> tuple[float | None, str]:
    """Training peak memory of a row: CUDA reserved on a GPU run, peak RSS on a CPU run."""
    vram = row.get("train_peak_vram_reserved_gb")
    if isinstance(vram, (int, float)) and not math.isnan(vram) and vram > 0:
        return float(vram), "GPU reserved"
    rss = row.get("train_peak_rss_gb")
    if isinstance(rss, (int, float)) and not math.isnan(rss) and rss > 0:
        return float(rss), "CPU RSS"
    return None, ""


def configuration_table(store: ObjectStore, table: pd.DataFrame, n_resamples: int = 1000) -> pd.DataFrame:
    """``table`` (one row per evaluated model) with the seeds of each configuration folded into one
    row (naming.without_seed: ``..._s1_...``, ``..._s2_...``): ``model`` is the configuration's name
    (the study's), every numeric column the mean over its seeds, each task metric's across-seed sd
    (``<task>__<metric>__sd_seeds``), its 95% CI two-level (seeds, then items:
    services/evaluator/stats.py) in place of the one-seed CI, ``n_seeds`` and ``seeds``. A
    configuration with one model keeps its row as it was (``n_seeds`` 1)."""
    if table.empty:
        return table
    from services.common.contract.naming import without_seed
    keys = [without_seed(m) for m in table["model"]]
    t = table.assign(model=[k[0] for k in keys], seed=[k[1] for k in keys])
    rows = []
    for config, group in t.groupby("model", sort=False):
        if len(group) == 1:
            rows.append(group.iloc[0].to_dict() | {"n_seeds": 1, "seeds": _seed_text(group.seed)})
            continue
        row: dict[str, Any] = {}
        for col in t.columns:
            values = group[col]
            numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
            row[col] = values.mean() if numeric and values.notna().any() else values.iloc[0]
        row |= {"model": config, "n_seeds": len(group), "seeds": _seed_text(group.seed),
                "eval_id": ",".join(map(str, group.eval_id))}
        row |= _seed_intervals(store, list(zip(group.index.map(lambda i: table.at[i, "model"]), group.eval_id)),
                               n_resamples)
        rows.append(row)
    out = pd.DataFrame(rows).drop(columns=["seed"])
    front = [c for c in table.columns if c in out.columns]
    return out[front + [c for c in out.columns if c not in front]]


def _seed_text(seeds: pd.Series) -> str:
    return ",".join(str(int(s)) for s in seeds if pd.notna(s))


def _seed_intervals(store: ObjectStore, evals: list[tuple[str, str]], n_resamples: int) -> dict[str, Any]:
    """Per task and CI metric: across-seed sd and the two-level 95% CI, on the items every seed's
    evaluation shares."""
    from flows.comparisons import items_by_id
    from services.evaluator import stats
    from services.evaluator.compare import _labels, load_eval
    loaded = [load_eval(store, f"{m}/{e}") for m, e in evals]
    out: dict[str, Any] = {}
    for task, d in loaded[0][0]["datasets"].items():
        if not all(task in m["datasets"] for m, _ in loaded):
            continue
        items = [items_by_id(p, task, d["type"]) for _, p in loaded]
        shared = sorted(set.intersection(*(set(x.index) for x in items)))
        if not shared:
            continue
        result = stats.replicated_ci(d["type"], [list(x.loc[shared, "parsed"]) for x in items],
                                     list(items[0].loc[shared, "gold"]), n_resamples, 0, _labels(task))
        for metric, r in result.items():
            out[f"{task}__{metric}__sd_seeds"] = r["sd_seeds"]
            out[f"{task}__{metric}__ci95_low"], out[f"{task}__{metric}__ci95_high"] = r["ci95"] or (None, None)
    return out
