"""Task metrics, in the study's key names and scales (``seed/example_metrics_*.json``).

Pure python + numpy: the evaluator's GPU process and the aggregation both import this.
This is the ``ftlab`` profile (the corrected definitions); ``study.py`` is the study's scorer
reproduced exactly. Inputs are answers already normalised by ``services.common.tasks``
(``parse_answer`` for predictions, ``gold_answer`` / ``gold_answers`` for golds); a ``None``
prediction is a format failure (no ``\\boxed{}`` answer).
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
    "boolq": ("f1_pos", "macro_f1", "balanced_accuracy", "MCC", "confusion_matrix", "support"),
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

def score_mcq4(preds: list[str | None], golds: list[str | None], labels: tuple[str, ...] = MCQ_LABELS) -> dict:
    """Accuracy (percent), macro-F1 over the task's label set (0..1), per-class precision/recall/F1
    and the confusion matrix (rows gold, columns prediction).

    Definition: scikit-learn's ``f1_score(golds, preds, labels=labels, average="macro",
    zero_division=0)`` — every label of the task counts, one that occurs in neither golds nor
    predictions has F1 0. A None prediction (format failure) or a letter outside ``labels`` is a
    miss for the gold's class (lowers its recall, no class gains a false positive) and is not a
    column of the confusion matrix. Checked against scikit-learn in tests/unit/test_scoring.py.
    """
    _check(preds, golds)
    correct = [p is not None and p == g for p, g in zip(preds, golds)]
    cm = {g: {p: 0 for p in labels} for g in labels}
    for p, g in zip(preds, golds):
        if g in cm and p in cm[g]:
            cm[g][p] += 1
    per_class, f1s = {}, []
    for c in labels:
        tp = sum(1 for p, g in zip(preds, golds) if p == g == c)
        predicted = sum(1 for p in preds if p == c)
        actual = sum(1 for g in golds if g == c)
        prec = tp / predicted if predicted else 0.0
        rec = tp / actual if actual else 0.0
        per_class[c] = {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(_f1(prec, rec), 4)}
        f1s.append(_f1(prec, rec))
    return {**_common(correct, preds), "macro_f1": round(float(np.mean(f1s)), 4) if f1s else 0.0,
            "per_class": per_class, "confusion_matrix": cm}


# ---------------------------------------------------------------------------------------------
# SQuAD v2: the official evaluation script's definitions (rajpurkar/SQuAD-explorer,
# evaluate-v2.0.py: normalize_answer, compute_exact, compute_f1, max over gold answers)

def normalize_squad(s: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(pred: str, gold: str) -> float:
    """Token F1 of one prediction against one gold (0..1); empty vs empty = 1, one empty = 0."""
    p, g = normalize_squad(pred).split(), normalize_squad(gold).split()
    if not p or not g:
        return float(p == g)  # no-answer: 1 only when both are empty
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def as_gold_list(gold: str | list | tuple | None) -> list[str]:
    """A SQuAD gold as a list of answers: a list as is, "" or None = unanswerable ([]), a string = [it]."""
    if gold is None:
        return []
    if isinstance(gold, str):
        return [gold] if gold.strip() else []
    return [str(g) for g in gold]


def squad_item(pred: str | None, golds: str | list[str] | None) -> tuple[bool, float, bool]:
    """(EM, F1, has_answer) of one item, as the official script: golds that normalise to "" are
    dropped and an item without any gold is scored against [""] (unanswerable: only an empty
    prediction matches); EM and F1 are maxima over the golds. has_answer: the dataset gave at
    least one gold. A None prediction (no \\boxed{} answer) scores 0 even on an unanswerable item."""
    raw = as_gold_list(golds)
    usable = [g for g in raw if normalize_squad(g)] or [""]
    if pred is None:
        return False, 0.0, bool(raw)
    em = any(normalize_squad(pred) == normalize_squad(g) for g in usable)
    return em, max(squad_f1(pred, g) for g in usable), bool(raw)


def score_squad_v2(preds: list[str | None], golds: list[list[str] | str]) -> dict:
    """EM, F1, HasAns_EM/F1, NoAns_Accuracy, AvNA_Accuracy, all percent with 2 decimals.

    ``golds``: per item the list of gold answers ([] = unanswerable; a plain string is a
    one-element list, "" unanswerable). EM/F1 per item are the official SQuAD v2 script's
    (``squad_item``); NoAns_Accuracy is its ``NoAns_exact``. A prediction of "" (the parser's
    mapping of \\boxed{unanswerable} and other empty-like answers) abstains; a None prediction
    (no \\boxed{} answer) is wrong everywhere, also for AvNA on an unanswerable question, so a
    format failure is never rewarded as an abstention. A subset with no items scores None.
    """
    _check(preds, golds)
    items = [squad_item(p, g) for p, g in zip(preds, golds)]
    em = [e for e, _, _ in items]
    f1 = [f for _, f, _ in items]
    has = [h for _, _, h in items]
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
# Yes/no (BoolQ)

def binary_counts(preds: list[str | None], golds: list[str]) -> dict[str, int]:
    """TP/TN/FP/FN with "True" the positive class; a None prediction is a miss for the gold's
    class (counted as the other answer: FN on a True gold, FP on a False one), as in the study."""
    out = {"TP": 0, "TN": 0, "FP": 0, "FN": 0}
    for p, g in zip(preds, golds):
        gold = g == "True"
        pred = (p == "True") if p is not None else not gold
        out[("T" if pred == gold else "F") + ("P" if pred else "N")] += 1
    return out


def score_boolq(preds: list[str | None], golds: list[str]) -> dict:
    """Accuracy (percent) and, as the study (0..1, 4 decimals): ``f1_pos`` (F1 of "True"),
    ``macro_f1`` (mean F1 of both classes), ``balanced_accuracy`` (mean recall of both classes),
    ``MCC`` (Matthews correlation; 0 when undefined), ``confusion_matrix`` {TP, TN, FP, FN}.

    Definitions: scikit-learn's ``f1_score(pos_label=True)``, ``f1_score(labels=[True, False],
    average="macro")`` (zero_division=0),
    ``balanced_accuracy_score``, ``matthews_corrcoef`` with a None prediction replaced by the
    answer that is not the gold; checked against scikit-learn in tests/unit/test_scoring.py.
    Golds are "True" / "False" (``tasks.normalise_answer``)."""
    _check(preds, golds)
    correct = [p is not None and p == g for p, g in zip(preds, golds)]
    c = binary_counts(preds, golds)
    tp, tn, fp, fn = c["TP"], c["TN"], c["FP"], c["FN"]
    f1_pos = _f1(tp / (tp + fp) if tp + fp else 0.0, tp / (tp + fn) if tp + fn else 0.0)
    f1_neg = _f1(tn / (tn + fn) if tn + fn else 0.0, tn / (tn + fp) if tn + fp else 0.0)
    # balanced accuracy: mean recall over the classes that occur among the golds
    recalls = ([tp / (tp + fn)] if tp + fn else []) + ([tn / (tn + fp)] if tn + fp else [])
    denom = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    return {**_common(correct, preds), "f1_pos": round(f1_pos, 4), "macro_f1": round((f1_pos + f1_neg) / 2, 4),
            "balanced_accuracy": round(float(np.mean(recalls)), 4) if recalls else 0.0,
            "MCC": round((tp * tn - fp * fn) / denom, 4) if denom else 0.0, "confusion_matrix": c}


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


SCORERS = {"mcq4": score_mcq4, "squad_v2": score_squad_v2, "math_numeric": score_numeric, "boolq": score_boolq}


def score(task, preds: list[str | None], golds: list) -> dict:
    """The ``ftlab`` profile's scores of one task (a ``tasks.TaskDef``): preds from
    ``tasks.parse_answer``, golds from ``tasks.gold_answer`` (SQuAD v2: ``tasks.gold_answers``)."""
    if task.type.value == "mcq4":
        return score_mcq4(preds, golds, task.labels)
    return SCORERS[task.type.value](preds, golds)
