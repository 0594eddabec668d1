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


# ----------------------------------------------------------------------------- seeds as replication
# One configuration trained with several seeds, each evaluated on the same items: a metric varies
# with the items drawn and with the seed. The two-level bootstrap resamples both: the seeds (with
# replacement), then the items (one draw shared by every seed: the items are the same test items
# for all of them, a crossed design), and averages the metric over the drawn seeds.

def _two_level(n_seeds: int, n_items: int, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(seed weights: resamples x seeds, how often each seed was drawn / n_seeds; item indices)."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    weights = np.stack([np.bincount(row, minlength=n_seeds) for row in drawn]) / n_seeds
    return weights, rng.integers(0, n_items, size=(n_resamples, n_items))


def _per_seed(task_type, preds_by_seed: list[list], golds: list, idx: np.ndarray, labels) -> dict[str, np.ndarray]:
    """{metric: seeds x rows of idx} (NaN where undefined)."""
    per = [resampled_metrics(task_type, item_columns(task_type, p, golds, labels), idx) for p in preds_by_seed]
    return {m: np.stack([x[m] for x in per]) for m in get_type(task_type).ci_metrics}


def _summary(point: np.ndarray, boot: np.ndarray) -> dict[str, Any]:
    """mean over seeds, sd across seeds (ddof 1; None for one seed), the bootstrap's 95% interval."""
    return {"mean": _num(float(point.mean())), "sd_seeds": _num(float(point.std(ddof=1))) if len(point) > 1 else None,
            "ci95": _interval(boot), "n_seeds": len(point)}


def replicated_ci(task_type: str | TaskType, preds_by_seed: list[list], golds: list,
                  n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                  labels: tuple[str, ...] = LABELS) -> dict[str, dict[str, Any]]:
    """Per CI metric of the type, over the seeds' predictions on the same items (``golds``): the mean
    over seeds, the across-seed sd and a 95% two-level (seeds, then items) percentile bootstrap CI.
    With one seed the interval is the items' alone (the one-level bootstrap)."""
    n_items, full = len(golds), np.arange(len(golds))[None, :]
    weights, idx = _two_level(len(preds_by_seed), n_items, n_resamples, seed)
    point, boot = _per_seed(task_type, preds_by_seed, golds, full, labels), _per_seed(task_type, preds_by_seed, golds, idx, labels)
    return {m: _summary(point[m][:, 0], (weights * boot[m].T).sum(1)) for m in point}


def replicated_paired(task_type: str | TaskType, preds_a: list[list], preds_b: list[list], golds: list,
                      n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                      labels: tuple[str, ...] = LABELS) -> dict[str, dict[str, Any]]:
    """B - A paired on items and seeds: ``preds_a[i]`` and ``preds_b[i]`` are seed i's (a side with
    one entry, e.g. the base model a fine-tune is compared with, is the same for every seed). Per
    metric: the mean difference over seeds, the across-seed sd of the per-seed differences, the
    two-level 95% CI (the same seeds and items drawn for both sides), the items-only CI (seeds held
    fixed) and ``within_seed_noise``: the two-level CI includes 0 and the difference is no larger
    than its across-seed sd, i.e. another set of seeds could well reverse it."""
    n = max(len(preds_a), len(preds_b))
    preds_a, preds_b = (p * n if len(p) == 1 else p for p in (preds_a, preds_b))
    if len(preds_a) != len(preds_b):
        raise ValueError(f"seeds do not pair: {len(preds_a)} vs {len(preds_b)}")
    full = np.arange(len(golds))[None, :]
    weights, idx = _two_level(n, len(golds), n_resamples, seed)
    pa, pb = _per_seed(task_type, preds_a, golds, full, labels), _per_seed(task_type, preds_b, golds, full, labels)
    ba, bb = _per_seed(task_type, preds_a, golds, idx, labels), _per_seed(task_type, preds_b, golds, idx, labels)
    out = {}
    for m in pa:
        diff = pb[m][:, 0] - pa[m][:, 0]
        row = {"a": _num(float(pa[m][:, 0].mean())), "b": _num(float(pb[m][:, 0].mean()))}
        row |= _summary(diff, (weights * (bb[m] - ba[m]).T).sum(1))
        row["ci95_items"] = _interval((bb[m] - ba[m]).mean(0))
        lo_hi, sd = row["ci95"], row["sd_seeds"]
        row["within_seed_noise"] = bool(n > 1 and lo_hi is not None and lo_hi[0] <= 0 <= lo_hi[1]
                                        and bool(sd) and abs(row["mean"] or 0.0) <= sd)
        out[m] = row
    return out
