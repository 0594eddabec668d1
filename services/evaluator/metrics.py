"""Task metrics, in the study's key names and scales (``seed/example_metrics_*.json``).

Pure python + numpy: the evaluator's GPU process and the aggregation both import this.
Inputs are answers already normalised by ``services.common.tasks`` (``parse_answer`` for predictions,
``gold_answer`` for golds); a ``None`` prediction is a format failure (no ``\\boxed{}`` answer).
Every scorer also returns ``correct`` (one bool per item, for predictions.parquet) and
``format_success_rate`` (percent of predictions that are not None).
"""
from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

MCQ_LABELS = ("A", "B", "C", "D")
_PUNCT = frozenset(string.punctuation)

# The keys of each type's "metrics" block in the study's JSON (the evaluator adds "task": title).
METRICS_BLOCK_KEYS = {
    "mcq4": ("macro_f1", "per_class", "confusion_matrix", "support"),
    "squad_v2": ("EM", "F1", "HasAns_EM", "HasAns_F1", "NoAns_Accuracy", "AvNA_Accuracy", "support"),
    "math_numeric": ("avg_abs_diff", "median_abs_diff", "parsed", "support"),
}


def _pct(num: float, den: int) -> float | None:
    return round(100.0 * num / den, 2) if den else None


def _check(preds: list, golds: list) -> None:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold answers")


def _common(correct: list[bool], preds: list) -> dict:
    n = len(correct)
    return {"accuracy": _pct(sum(correct), n), "format_success_rate": _pct(sum(p is not None for p in preds), n),
            "support": n, "correct": correct}


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


# ---------------------------------------------------------------------------------------------
# Multiple choice

def score_mcq4(preds: list[str | None], golds: list[str], labels: tuple[str, ...] = MCQ_LABELS) -> dict:
    """Accuracy (percent), macro-F1 over A–D (0..1), per-class precision/recall/F1, confusion matrix.

    A None prediction (or a letter outside ``labels``, e.g. "E") is wrong: it lowers the gold class's
    recall and is not a column of the confusion matrix, so a row sums to that class's support minus
    its format failures. Macro-F1 averages the classes that occur in golds or predictions
    (scikit-learn's default); per_class lists every label.
    """
    _check(preds, golds)
    correct = [p is not None and p == g for p, g in zip(preds, golds)]
    cm = {g: {p: 0 for p in labels} for g in labels}
    for p, g in zip(preds, golds):
        if g in cm and p in cm[g]:
            cm[g][p] += 1
    per_class, f1s = {}, []
    for c in labels:
        tp = cm[c][c]
        predicted = sum(1 for p in preds if p == c)
        actual = sum(1 for g in golds if g == c)
        prec = tp / predicted if predicted else 0.0
        rec = tp / actual if actual else 0.0
        per_class[c] = {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(_f1(prec, rec), 4)}
        if predicted or actual:
            f1s.append(_f1(prec, rec))
    return {**_common(correct, preds), "macro_f1": round(float(np.mean(f1s)), 4) if f1s else 0.0,
            "per_class": per_class, "confusion_matrix": cm}


# ---------------------------------------------------------------------------------------------
# SQuAD v2 (the official evaluation script's normalisation and token F1)

def normalize_squad(s: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(pred: str, gold: str) -> float:
    p, g = normalize_squad(pred).split(), normalize_squad(gold).split()
    if not p or not g:
        return float(p == g)  # no-answer: 1 only when both are empty
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def score_squad_v2(preds: list[str | None], golds: list[str]) -> dict:
    """EM, F1, HasAns_EM/F1, NoAns_Accuracy, AvNA_Accuracy, all percent with 2 decimals.

    Gold "" = unanswerable; a prediction of "" (the parser's mapping of \\boxed{unanswerable} and
    other empty-like answers) abstains. A None prediction (no \\boxed{} answer) is wrong everywhere:
    EM 0, F1 0, and wrong for AvNA even on an unanswerable question, so a format failure is never
    rewarded as an abstention. A subset with no items (e.g. no unanswerable golds) scores None.
    """
    _check(preds, golds)
    em = [p is not None and normalize_squad(p) == normalize_squad(g) for p, g in zip(preds, golds)]
    f1 = [squad_f1(p, g) if p is not None else 0.0 for p, g in zip(preds, golds)]
    has = [bool(normalize_squad(g)) for g in golds]
    avna = [p is not None and bool(normalize_squad(p)) == h for p, h in zip(preds, has)]
    n_has = sum(has)
    n_no = len(golds) - n_has
    return {**_common(em, preds),
            "EM": _pct(sum(em), len(golds)), "F1": _pct(sum(f1), len(golds)),
            "HasAns_EM": _pct(sum(e for e, h in zip(em, has) if h), n_has),
            "HasAns_F1": _pct(sum(f for f, h in zip(f1, has) if h), n_has),
            "NoAns_Accuracy": _pct(sum(e for e, h in zip(em, has) if not h), n_no),
            "AvNA_Accuracy": _pct(sum(avna), len(golds))}


# ---------------------------------------------------------------------------------------------
# Numeric

def score_numeric(preds: list[str | None], golds: list[str], tol: float = 1e-4) -> dict:
    """Accuracy (|pred - gold| <= tol, absolute), and like the study avg_abs_diff over the parsed
    answers only (a None prediction has no distance), plus median_abs_diff and the parsed count.
    Distances are None when nothing parsed."""
    _check(preds, golds)
    diffs = [abs(float(p) - float(g)) if p is not None else None for p, g in zip(preds, golds)]
    correct = [d is not None and d <= tol for d in diffs]
    parsed = [d for d in diffs if d is not None]
    return {**_common(correct, preds),
            "avg_abs_diff": round(float(np.mean(parsed)), 6) if parsed else None,
            "median_abs_diff": round(float(np.median(parsed)), 6) if parsed else None,
            "parsed": len(parsed)}


SCORERS = {"mcq4": score_mcq4, "squad_v2": score_squad_v2, "math_numeric": score_numeric}
