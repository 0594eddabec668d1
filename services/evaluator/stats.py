"""Honest statistics: seeded bootstrap confidence intervals for every CI metric of a task type
(its plugin's ``ci_metrics``), and the paired comparison of two evaluations (paired bootstrap of
the difference + exact McNemar).

Every CI metric is rebuilt from per-item columns (the type's ``item_columns``), so one resample is
a row of item indices and every metric of that resample is a vectorised numpy reduction (the
type's ``resampled``). The same
functions serve one evaluation (``bootstrap_ci``) and a pair on shared items (``paired``).
Scales follow ``metrics.py``: percent for accuracy-like metrics, 0..1 for macro-F1, raw units for
numeric distances.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from services.common.data.task_types import TaskType, get_type
from services.common.data.task_types.base import DEFAULT_LABELS as LABELS  # the study's A-D, when a caller gives none

DEFAULT_RESAMPLES = 1000

# metric -> the per-item boolean column it averages (McNemar applies to these).
BINARY = {"accuracy": "correct", "EM": "correct", "format_success_rate": "parsed_ok", "AvNA_Accuracy": "avna"}


def item_columns(task_type: str | TaskType, preds: list[str | None], golds: list,
                 labels: tuple[str, ...] = LABELS) -> dict[str, np.ndarray]:
    """Per-item arrays from which every CI metric of ``task_type`` is a reduction (the type's
    ``item_columns`` plus ``parsed_ok``). ``golds`` as the scorers take them (multi-gold types: a
    list of answers per item); ``labels``: the task's option letters."""
    cols = get_type(task_type).item_columns(preds, golds, labels)
    return {**cols, "parsed_ok": np.array([p is not None for p in preds])}


def resampled_metrics(task_type: str | TaskType, cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Every CI metric for each row of ``idx`` (resamples x items); NaN where undefined."""
    out = {"accuracy": 100.0 * cols["correct"][idx].mean(1),
           "format_success_rate": 100.0 * cols["parsed_ok"][idx].mean(1)}
    return out | get_type(task_type).resampled(cols, idx)


def _resamples(n: int, n_resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _interval(values: np.ndarray, digits: int = 4) -> list[float] | None:
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [round(float(lo), digits), round(float(hi), digits)]


def bootstrap_ci(task_type: str | TaskType, preds: list, golds: list, n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0, labels: tuple[str, ...] = LABELS) -> dict[str, list[float] | None]:
    """95% percentile bootstrap CI per CI metric of the type: ``{metric: [low, high]}`` (None if undefined)."""
    metrics = get_type(task_type).ci_metrics
    if not preds:
        return {m: None for m in metrics}
    cols = item_columns(task_type, preds, golds, labels)
    boot = resampled_metrics(task_type, cols, _resamples(len(preds), n_resamples, seed))
    return {m: _interval(boot[m]) for m in metrics}


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


def paired(task_type: str | TaskType, preds_a: list, preds_b: list, golds: list, n_resamples: int = DEFAULT_RESAMPLES,
           seed: int = 0, labels: tuple[str, ...] = LABELS) -> dict[str, dict[str, Any]]:
    """B - A for each headline metric on the same items: point difference, 95% paired-bootstrap CI
    (both evaluations resampled with the same item indices) and, for the metrics that average a
    per-item right/wrong, the exact McNemar p-value and the discordant counts."""
    ca, cb = item_columns(task_type, preds_a, golds, labels), item_columns(task_type, preds_b, golds, labels)
    full = np.arange(len(golds))[None, :]
    point_a, point_b = resampled_metrics(task_type, ca, full), resampled_metrics(task_type, cb, full)
    idx = _resamples(len(golds), n_resamples, seed)
    boot_a, boot_b = resampled_metrics(task_type, ca, idx), resampled_metrics(task_type, cb, idx)
    out = {}
    for m in get_type(task_type).ci_metrics:
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
