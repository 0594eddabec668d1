"""The per-method degradation table of post-training quantization: one row per quantized model
against its unquantized parent, so a user can pick a method from one table.

Columns: the quantizer's own measurements (``quantization_report.json``: size on disk and in memory
as bytes and ratios, mean KL(parent ‖ quantized), top-1 agreement, perplexity of each and the
delta, on held-out prompts) and, where both models were evaluated on the same tasks, each task's
headline score difference quantized − parent on the shared items with its paired-bootstrap 95% CI
and exact McNemar p (``services.evaluator.compare``), plus the evaluation speed ratio
(generated tokens/s quantized ÷ parent). Both evaluations scored alike (the same engine and dtype,
flows/comparisons.scoring: a bitsandbytes model runs on HF, so its source's HF evaluation — the one
the planner adds for it — is the one compared, and the speed ratio is the quantization's, not the
engine's); only without such a pair the same tasks under another engine, with ``like_for_like``
false. Torch-free: reads storage only.

Seeds: the quantizations of one configuration's seeds (``…_s1_Int8_BnB``, ``…_s2_Int8_BnB``:
naming.without_seed) fold into one row, as in the summary: each measurement the mean over the
seeds with its across-seed sd (``<column>__sd_seeds``), ``n_seeds`` and ``seeds``; each task's
difference paired on items and seeds (seed i's quantization against seed i's source, a two-level
bootstrap CI: flows/comparisons.paired_on_seeds), with no McNemar p (one per seed would not add up)."""
from __future__ import annotations

from typing import Any

import pandas as pd

from services.common.contract.naming import without_seed
from services.common.storage import artifacts
from services.common.contract.errors import FtlabError, NotFoundError
from services.common.storage.store import ObjectStore
from services.evaluator import compare

BASE_COLUMNS = ["model", "parent", "method", "quant_tag", "backend", "disk_ratio", "memory_ratio", "disk_mb",
                "memory_mb", "kl_mean", "top1_agreement", "ppl_parent", "ppl_quantized", "ppl_delta",
                "eval_speed_ratio", "n_seeds", "seeds"]
SD_COLUMNS = ["disk_ratio", "memory_ratio", "kl_mean", "top1_agreement", "ppl_delta", "eval_speed_ratio"]


def _report(store: ObjectStore, model: str) -> dict[str, Any]:
    try:
        return artifacts.read_json(store, "models", model, "quantization_report.json")
    except NotFoundError:
        return {}


def _metrics(store: ObjectStore, model: str, eval_id: str) -> dict[str, Any]:
    return artifacts.read_json(store, "evaluations", f"{model}/{eval_id}", "metrics.json")


def _evaluations(store: ObjectStore, model: str) -> dict[tuple, str]:
    """Task set (+ limits and KV cache), engine and dtype -> the newest evaluation id of ``model`` with them."""
    from flows.comparisons import _label, scoring
    found: dict[tuple, tuple[str, str]] = {}
    for prefix in artifacts.list_committed(store, "evaluations", f"{model}/"):
        eval_id = prefix.split("/", 1)[1]
        try:
            metrics = _metrics(store, model, eval_id)
        except (NotFoundError, ValueError):
            continue
        spec = metrics.get("spec", {})
        key = (tuple(sorted((t["task"], t.get("limit") or 0) for t in spec.get("tasks", []))),
               spec.get("kv_cache_dtype", "auto"), _label(scoring(metrics)))
        stamp = (artifacts.read_manifest(store, "evaluations", prefix) or {}).get("created_at", "")
        if key not in found or str(stamp) > str(found[key][0]):
            found[key] = (str(stamp), eval_id)
    return {k: v[1] for k, v in found.items()}


def degradation_row(store: ObjectStore, model: str, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """One quantized model's row (see the module docstring); task columns ``<task>__diff``,
    ``<task>__ci95``, ``<task>__mcnemar_p``, ``<task>__n`` for its headline accuracy-type metric."""
    manifest = manifest or artifacts.read_manifest(store, "models", model) or {}
    parent = manifest.get("source_model") or next(iter(manifest.get("parents") or []), "")
    rep = _report(store, model)
    deg, size, qual = rep.get("degradation") or {}, rep.get("size") or {}, rep.get("quality") or {}
    q = manifest.get("quantization") or {}
    row: dict[str, Any] = {
        "model": model, "parent": parent, "method": deg.get("method") or q.get("service_method") or q.get("method"),
        "quant_tag": q.get("quant_tag"), "backend": q.get("backend"),
        "disk_ratio": (size.get("disk_bytes") or {}).get("ratio"),
        "memory_ratio": (size.get("weight_memory_bytes") or {}).get("ratio"),
        "disk_mb": _mb((size.get("disk_bytes") or {}).get("quantized")),
        "memory_mb": _mb((size.get("weight_memory_bytes") or {}).get("quantized")),
        "kl_mean": qual.get("kl_mean"), "top1_agreement": qual.get("top1_agreement"),
        "ppl_parent": qual.get("ppl_source"), "ppl_quantized": qual.get("ppl_quantized"),
        "ppl_delta": qual.get("ppl_delta"), "eval_speed_ratio": None}
    if not parent:
        return row
    mine, theirs = _evaluations(store, model), _evaluations(store, parent)
    pairs = ([(k, k) for k in mine if k in theirs]  # the same tasks, KV cache, engine and dtype
             or [(k, t) for k in mine for t in theirs if k[:2] == t[:2]])  # else: under another engine
    if not pairs:
        return row
    key, pkey = max(pairs, key=lambda kp: len(kp[0][0]))  # the evaluation covering the most tasks
    row["like_for_like"] = key == pkey
    try:
        result = compare.compare(store, f"{parent}/{theirs[pkey]}", f"{model}/{mine[key]}")
        m_q, m_p = _metrics(store, model, mine[key]), _metrics(store, parent, theirs[pkey])
    except artifacts.IntegrityError:
        raise  # corrupt bytes fail the report; they never just leave a row empty
    except (FtlabError, ValueError):
        return row
    tps_q = m_q.get("summary", {}).get("throughput", {}).get("tokens_per_s")
    tps_p = m_p.get("summary", {}).get("throughput", {}).get("tokens_per_s")
    row["eval_speed_ratio"] = round(tps_q / tps_p, 4) if tps_q and tps_p else None
    row["_compared"] = (f"{parent}/{theirs[pkey]}", f"{model}/{mine[key]}")  # for the seeds' pairing
    row["eval_tokens_per_s"] = tps_q
    for task, entry in result["tasks"].items():
        metrics = entry.get("metrics") or {}
        name = next((m for m in metrics if "mcnemar_p" in metrics[m]), next(iter(metrics), None))
        if name is None:
            continue
        r = metrics[name]
        row |= {f"{task}__metric": name, f"{task}__diff": r["diff"], f"{task}__ci95": r["ci95"],
                f"{task}__mcnemar_p": r.get("mcnemar_p"), f"{task}__n": entry["shared_items"]}
    return row


def _mb(n: int | None) -> float | None:
    return round(n / 2**20, 3) if n else None


def degradation_table(store: ObjectStore, models: list[str] | None = None) -> pd.DataFrame:
    """One row per quantized model (``models``: these names; default: every quantized model in
    storage), sorted by parent then KL. Empty DataFrame when there are none."""
    names = models if models is not None else artifacts.list_committed(store, "models")
    rows = []
    for name in names:
        manifest = artifacts.read_manifest(store, "models", name)
        if manifest and manifest.get("kind") == "quantized":
            rows.append(degradation_row(store, name, manifest))
    if not rows:
        return pd.DataFrame(columns=BASE_COLUMNS)
    df = pd.DataFrame(fold_seeds(store, rows)).drop(columns="_compared", errors="ignore")
    rest = sorted(c for c in df.columns if c not in BASE_COLUMNS)
    return df[BASE_COLUMNS + rest].sort_values(["parent", "kl_mean"], na_position="last").reset_index(drop=True)


def fold_seeds(store: ObjectStore, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration (see the module docstring); a model without seeds keeps its row."""
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for r in rows:
        config, seed = without_seed(r["model"])
        groups.setdefault(config, []).append((-1 if seed is None else seed, r))
    out = []
    for config, members in groups.items():
        seeds = ",".join(str(s) for s, _ in sorted(members, key=lambda m: m[0]) if s >= 0)
        if len(members) == 1:
            out.append(members[0][1] | {"n_seeds": 1, "seeds": seeds})
            continue
        df = pd.DataFrame([r for _, r in sorted(members, key=lambda m: m[0])])
        row: dict[str, Any] = {}
        for col in df.columns:
            values = df[col]
            numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
            row[col] = values.mean() if numeric and values.notna().any() else values.iloc[0]
            if numeric and (col in SD_COLUMNS or col.endswith("__diff")):
                row[f"{col}__sd_seeds"] = values.std(ddof=1) if values.notna().sum() > 1 else None
        row |= {"model": config, "parent": without_seed(str(row["parent"]))[0], "n_seeds": len(members),
                "seeds": seeds, **_paired_tasks(store, list(df.get("_compared", [])), row)}
        out.append(row)
    return out


def _paired_tasks(store: ObjectStore, compared: list, row: dict[str, Any]) -> dict[str, Any]:
    """Each task's difference paired on items and seeds; without every seed's pair of evaluations,
    the mean of the seeds' differences stays, with no interval."""
    tasks = [c.removesuffix("__metric") for c in row if c.endswith("__metric")]
    out: dict[str, Any] = {f"{t}__{k}": None for t in tasks for k in ("ci95", "mcnemar_p")}
    if not tasks or not all(isinstance(c, tuple) for c in compared):
        return out
    from flows.comparisons import paired_on_seeds
    parents = [compare.load_eval(store, p) for p, _ in compared]
    quantized = [compare.load_eval(store, q) for _, q in compared]
    for t in tasks:
        got = paired_on_seeds(parents, quantized, t)
        r = got[0].get(row[f"{t}__metric"]) if got else None
        if r is not None:
            out |= {f"{t}__diff": r["mean"], f"{t}__ci95": r["ci95"], f"{t}__diff__sd_seeds": r["sd_seeds"],
                    f"{t}__n": got[1]}
    return out


def markdown_section(table: pd.DataFrame) -> list[str]:
    """The report's section: the table (or a line saying there is no quantized model)."""
    lines = ["## Post-training quantization: degradation per method", ""]
    if table.empty:
        return lines + ["(no quantized model in this run)", ""]
    lines += ["Each quantized model against its unquantized parent: size ratios (quantized ÷ parent), mean "
              "KL(parent ‖ quantized) and top-1 agreement of next-token distributions, perplexity delta on "
              "held-out prompts (quantizer report); per task, the headline score difference quantized − parent "
              "on shared items with its 95% paired-bootstrap CI and McNemar p; evaluation speed ratio "
              "(tokens/s quantized ÷ parent). A configuration trained with several seeds is one row: the mean "
              "over its seeds (sd across seeds in the `__sd_seeds` columns), each task's difference paired on items "
              "and seeds (seed i's quantization against seed i's source) with a two-level 95% CI. Both scored "
              "with the same engine and dtype where storage holds such a pair (`like_for_like`); a row with "
              "`like_for_like` false mixes the quantization with the engine.", ""]
    shown = table.copy()
    if "n_seeds" in shown and not (shown.n_seeds > 1).any():  # as the summary: seed columns only with seeds
        shown = shown.drop(columns=["n_seeds", "seeds"])
    for c in [c for c in shown.columns if c.endswith("__ci95")]:
        shown[c] = shown[c].map(lambda v: f"[{v[0]:.3g}, {v[1]:.3g}]" if isinstance(v, (list, tuple)) else "")
    lines += [shown.astype(object).where(shown.notna(), None).to_markdown(index=False, floatfmt=".4g", missingval=""), ""]
    return lines
