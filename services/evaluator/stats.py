"""Honest statistics: seeded bootstrap confidence intervals for every headline metric, and the
paired comparison of two evaluations (paired bootstrap of the difference + exact McNemar).

Every headline metric is rebuilt from per-item columns (``item_columns``), so one resample is a
row of item indices and every metric of that resample is a vectorised numpy reduction. The same
functions serve one evaluation (``bootstrap_ci``) and a pair on shared items (``paired``).
Scales follow ``metrics.py``: percent for accuracy-like metrics, 0..1 for macro-F1, raw units for
numeric distances.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from services.evaluator import metrics as M

DEFAULT_RESAMPLES = 1000

# The metrics that get a CI, per task type ("accuracy-type" ones are per-item right/wrong too).
HEADLINE = {
    "mcq4": ("accuracy", "macro_f1", "format_success_rate"),
    "squad_v2": ("accuracy", "EM", "F1", "HasAns_EM", "HasAns_F1", "NoAns_Accuracy", "AvNA_Accuracy",
                 "format_success_rate"),
    "math_numeric": ("accuracy", "avg_abs_diff", "median_abs_diff", "format_success_rate"),
    "boolq": ("accuracy", "f1_pos", "balanced_accuracy", "MCC", "format_success_rate"),
}
# metric -> the per-item boolean column it averages (McNemar applies to these).
BINARY = {"accuracy": "correct", "EM": "correct", "format_success_rate": "parsed_ok", "AvNA_Accuracy": "avna"}


def item_columns(task_type: str, preds: list[str | None], golds: list,
                 labels: tuple[str, ...] = M.MCQ_LABELS) -> dict[str, np.ndarray]:
    """Per-item arrays from which every headline metric of ``task_type`` is a reduction.
    ``golds`` as the scorers take them (SQuAD v2: a list of answers per item); ``labels``: the
    mcq4 task's label set, over which macro-F1 averages."""
    ok = np.array([p is not None for p in preds])
    if task_type == "mcq4":  # macro-F1 over the task's full label set, as the scorer
        code = {c: i for i, c in enumerate(labels)}
        return {"correct": np.array(M.score_mcq4(preds, golds, labels)["correct"]), "parsed_ok": ok,
                "n_labels": np.array(len(labels)),
                "pred": np.array([code.get(p, -1) for p in preds]), "gold": np.array([code.get(g, -1) for g in golds])}
    if task_type == "squad_v2":
        items = [M.squad_item(p, g) for p, g in zip(preds, golds)]
        has = np.array([h for _, _, h in items], dtype=bool)
        return {"correct": np.array([e for e, _, _ in items], dtype=bool), "parsed_ok": ok, "has": has,
                "f1": np.array([f for _, f, _ in items], dtype=float),
                "avna": np.array([p is not None and bool(M.normalize_squad(p)) == h for p, h in zip(preds, has)])}
    if task_type == "boolq":
        c = np.array([p is not None and p == g for p, g in zip(preds, golds)])
        gold = np.array([g == "True" for g in golds])
        return {"correct": c, "parsed_ok": ok, "gold_pos": gold, "pred_pos": np.where(c, gold, ~gold)}
    if task_type == "math_numeric":
        diff = np.array([abs(float(p) - float(g)) if p is not None and g is not None else np.nan
                         for p, g in zip(preds, golds)])
        return {"correct": np.nan_to_num(diff, nan=np.inf) <= 1e-4, "parsed_ok": ok, "diff": diff}
    raise ValueError(f"unknown task type {task_type!r}")


def _ratio(num: np.ndarray, den: np.ndarray, scale: float = 100.0) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, scale * num / np.maximum(den, 1), np.nan)


def headline_metrics(task_type: str, cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Every headline metric for each row of ``idx`` (resamples x items); NaN where undefined."""
    n = idx.shape[1]
    out = {"accuracy": 100.0 * cols["correct"][idx].mean(1),
           "format_success_rate": 100.0 * cols["parsed_ok"][idx].mean(1)}
    if task_type == "mcq4":
        pred, gold = cols["pred"][idx], cols["gold"][idx]
        f1s = []
        for c in range(int(cols["n_labels"])):
            tp = ((pred == c) & (gold == c)).sum(1)
            npred, nact = (pred == c).sum(1), (gold == c).sum(1)
            prec, rec = np.where(npred > 0, tp / np.maximum(npred, 1), 0.0), np.where(nact > 0, tp / np.maximum(nact, 1), 0.0)
            f1s.append(np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0))
        out["macro_f1"] = np.stack(f1s).mean(0) if f1s else np.zeros(idx.shape[0])
    elif task_type == "squad_v2":
        has = cols["has"][idx]
        em, f1 = cols["correct"][idx], cols["f1"][idx]
        out |= {"EM": 100.0 * em.mean(1), "F1": 100.0 * f1.mean(1),
                "HasAns_EM": _ratio((em & has).sum(1), has.sum(1)), "HasAns_F1": _ratio((f1 * has).sum(1), has.sum(1)),
                "NoAns_Accuracy": _ratio((em & ~has).sum(1), n - has.sum(1)),
                "AvNA_Accuracy": 100.0 * cols["avna"][idx].mean(1)}
    elif task_type == "boolq":  # as metrics.score_boolq, from the confusion counts of each resample
        g, p = cols["gold_pos"][idx], cols["pred_pos"][idx]
        tp, tn = (g & p).sum(1).astype(float), (~g & ~p).sum(1).astype(float)
        fp, fn = (~g & p).sum(1).astype(float), (g & ~p).sum(1).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            prec, rec = np.where(tp + fp > 0, tp / (tp + fp), 0.0), np.where(tp + fn > 0, tp / (tp + fn), 0.0)
            out["f1_pos"] = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
            rec_n = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
            classes = (tp + fn > 0).astype(float) + (tn + fp > 0)
            out["balanced_accuracy"] = np.where(classes > 0, (rec + rec_n) / np.maximum(classes, 1), 0.0)
            denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
            out["MCC"] = np.where(denom > 0, (tp * tn - fp * fn) / np.where(denom > 0, denom, 1), 0.0)
    elif task_type == "math_numeric":
        d = cols["diff"][idx]
        with warnings.catch_warnings():  # a resample with no parsed answer: NaN, not a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            out |= {"avg_abs_diff": np.nanmean(d, 1), "median_abs_diff": np.nanmedian(d, 1)}
    return out


def _resamples(n: int, n_resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _interval(values: np.ndarray, digits: int = 4) -> list[float] | None:
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [round(float(lo), digits), round(float(hi), digits)]


def bootstrap_ci(task_type: str, preds: list, golds: list, n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0, labels: tuple[str, ...] = M.MCQ_LABELS) -> dict[str, list[float] | None]:
    """95% percentile bootstrap CI per headline metric: ``{metric: [low, high]}`` (None if undefined)."""
    if not preds:
        return {m: None for m in HEADLINE[task_type]}
    cols = item_columns(task_type, preds, golds, labels)
    boot = headline_metrics(task_type, cols, _resamples(len(preds), n_resamples, seed))
    return {m: _interval(boot[m]) for m in HEADLINE[task_type]}


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Exact two-sided McNemar test on paired booleans: binomial test of the discordant pairs."""
    n01 = int((a & ~b).sum())
    n10 = int((~a & b).sum())
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired(task_type: str, preds_a: list, preds_b: list, golds: list, n_resamples: int = DEFAULT_RESAMPLES,
           seed: int = 0, labels: tuple[str, ...] = M.MCQ_LABELS) -> dict[str, dict[str, Any]]:
    """B - A for each headline metric on the same items: point difference, 95% paired-bootstrap CI
    (both evaluations resampled with the same item indices) and, for the metrics that average a
    per-item right/wrong, the exact McNemar p-value and the discordant counts."""
    ca, cb = item_columns(task_type, preds_a, golds, labels), item_columns(task_type, preds_b, golds, labels)
    full = np.arange(len(golds))[None, :]
    point_a, point_b = headline_metrics(task_type, ca, full), headline_metrics(task_type, cb, full)
    idx = _resamples(len(golds), n_resamples, seed)
    boot_a, boot_b = headline_metrics(task_type, ca, idx), headline_metrics(task_type, cb, idx)
    out = {}
    for m in HEADLINE[task_type]:
        a, b = float(point_a[m][0]), float(point_b[m][0])
        row: dict[str, Any] = {"a": _num(a), "b": _num(b), "diff": _num(b - a),
                               "ci95": _interval(boot_b[m] - boot_a[m])}
        if m in BINARY:
            xa, xb = ca[BINARY[m]].astype(bool), cb[BINARY[m]].astype(bool)
            row |= {"mcnemar_p": float(f"{mcnemar_p(xa, xb):.4g}"),  # 4 significant digits: tiny p stay > 0
                    "a_only": int((xa & ~xb).sum()), "b_only": int((~xa & xb).sum())}
        out[m] = row
    return out


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)
