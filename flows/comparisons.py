"""What each configuration changed against the model it was made from, with its uncertainty.

Every evaluated model whose parent was evaluated too (a fine-tune -> its base model, a
post-training-quantized model -> its source) is compared with that parent on the items both
evaluations share: ``services.evaluator.compare`` (what ``ftlab compare`` prints), i.e. the
difference model - parent of each headline metric with a 95% paired-bootstrap CI and, for per-item
right/wrong metrics (accuracy, format success), the exact McNemar p-value. Torch-free.
"""
from __future__ import annotations

import pandas as pd

from services.common.storage import artifacts
from services.common.contract.errors import NotFoundError
from services.common.storage.store import ObjectStore
from services.common.data.task_types import get_type
from services.evaluator.compare import compare

COLUMNS = ["model", "vs", "relation", "task", "metric", "items", "parent_value", "value", "diff",
           "ci95_low", "ci95_high", "mcnemar_p", "clear"]


def parent_of(store: ObjectStore, model: str) -> tuple[str | None, str]:
    """(the model it was made from, how): a trained model's base, a quantized model's source."""
    m = artifacts.read_manifest(store, "models", model) or {}
    if m.get("kind") == "trained":
        return m.get("base_model") or next(iter(m.get("parents") or []), None), "fine-tune vs base"
    if m.get("kind") == "quantized":
        return next(iter(m.get("parents") or []), None), "PTQ vs source"
    return None, ""


def vs_parent_table(store: ObjectStore, evaluations: list[tuple[str, str]], n_resamples: int = 1000,
                    seed: int = 0) -> pd.DataFrame:
    """One row per (model, task, metric): parent value, model value, difference, 95% paired CI,
    McNemar p where defined, and ``clear`` = the CI excludes 0 (and p < 0.05 where there is a p).
    ``evaluations``: (model, eval_id) pairs; the last one listed per model is used."""
    evals = dict(evaluations)
    rows = []
    for model, eval_id in evals.items():
        parent, relation = parent_of(store, model)
        if parent is None or parent not in evals:
            continue
        try:
            result = compare(store, f"{parent}/{evals[parent]}", f"{model}/{eval_id}", n_resamples, seed)
        except NotFoundError:  # an evaluation without per-item predictions cannot be paired
            continue
        for task, entry in result["tasks"].items():
            for metric in get_type(entry["type"]).lead_metrics:  # the type's plugin: what the report leads with
                r = entry.get("metrics", {}).get(metric)
                if r is None or r["diff"] is None:
                    continue
                lo, hi = r["ci95"] if r["ci95"] else (None, None)
                p = r.get("mcnemar_p")
                clear = lo is not None and (lo > 0 or hi < 0) and (p is None or p < 0.05)
                rows.append({"model": model, "vs": parent, "relation": relation, "task": task, "metric": metric,
                             "items": entry["shared_items"], "parent_value": r["a"], "value": r["b"],
                             "diff": r["diff"], "ci95_low": lo, "ci95_high": hi, "mcnemar_p": p, "clear": clear})
    return pd.DataFrame(rows, columns=COLUMNS)


def lead_table(vs: pd.DataFrame) -> pd.DataFrame:
    """The report's first table: readable columns, clear differences first."""
    if vs.empty:
        return vs
    t = vs.copy()
    t["95% CI"] = [f"[{lo:+.3g}, {hi:+.3g}]" if pd.notna(lo) else "" for lo, hi in zip(t.ci95_low, t.ci95_high)]
    t["p (McNemar)"] = [f"{p:.2g}" if pd.notna(p) else "—" for p in t.mcnemar_p]  # —: not a right/wrong metric
    t["clear?"] = ["yes" if c else "no" for c in t.clear]
    t = t.sort_values(["clear", "relation", "model"], ascending=[False, True, True], kind="stable")
    return t[["model", "vs", "task", "metric", "items", "parent_value", "value", "diff", "95% CI",
              "p (McNemar)", "clear?"]].rename(columns={"parent_value": "parent", "value": "this model"})
