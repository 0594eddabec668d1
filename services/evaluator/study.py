r"""The ``study`` scoring profile: the original study's scorer (``Testing/02_TestModels.py`` of
albrp97/LLM-Training) reproduced exactly, quirks included, so that a number scored here can be
put next to a number from the study's table. Written from its definitions, not copied.

The quirks, each with a parity test in tests/unit/test_scoring.py:

- the answer is the FIRST ``\boxed{`` up to the FIRST ``}`` (nested braces cut it short);
- ARC: upper-cased; a longer answer takes its first A-D character (so "Option C" gives "C" but
  "the answer is C" gives "A", from "ANSWER"); digits give no answer; macro-F1 over A-D counts
  only items whose gold AND prediction are A-D;
- BoolQ: true/t/yes/y/1 and false/f/no/n/0; a missing answer counts as the wrong class;
- SQuAD v2: an unboxed answer is an empty prediction, i.e. an abstention; answerable vs not is
  decided by the empty-like set (after SQuAD normalisation: "n/a" becomes "na", which is NOT in
  the set); the gold is the first gold answer only (the study's data kept ``texts[0]``);
- OpenMath: plain ``float()`` of the boxed text and of the gold; correct iff |difference| < 1e-4;
  ``avg_abs_diff`` is the mean over predictions that converted (the study divides by zero when
  answers were boxed but none converted; here it is None);
- latency / token statistics: sample standard deviation, the mode of latencies rounded to 3
  decimals (the first-seen value among ties).

Pure python: imported by the evaluator's recipe and by ``ftlab score`` (no torch).
"""
from __future__ import annotations

import math
import re
import statistics
import string
from collections import Counter
from typing import Any

SOURCE = "albrp97/LLM-Training Testing/02_TestModels.py (compute_metrics, calculate_latency_metrics)"
TITLES = {"mcq4": "ARC (4-way MCQ)", "boolq": "BoolQ (binary)", "squad_v2": "SQuAD v2",
          "math_numeric": "OpenMathInstruct-2 (numeric)"}

_FIRST_BOX = re.compile(r"\\boxed\{\s*(.*?)\s*\}", re.DOTALL)
_ARC = ("A", "B", "C", "D")
_ARTICLES = frozenset({"a", "an", "the"})
_NO_PUNCT = str.maketrans("", "", string.punctuation)
EMPTY_LIKE = frozenset({"", "unanswerable", "unknown", "no answer", "n a", "none", "null"})


# ---------------------------------------------------------------------------------------------
# Parsing

def first_boxed(text: Any) -> str | None:
    r"""Content of the first ``\boxed{`` up to the first ``}``, stripped; None if there is none."""
    if not isinstance(text, str):
        return None
    m = _FIRST_BOX.search(text)
    return m.group(1).strip() if m else None


def arc_option(s: str | None) -> str | None:
    """Upper-cased; one character: itself if A-D; longer: its first A-D character; else None."""
    if s is None:
        return None
    t = s.strip().upper()
    if len(t) == 1:
        return t if t in _ARC else None
    return next((c for c in t if c in _ARC), None)


def yes_no(s: str | None) -> bool | None:
    if s is None:
        return None
    t = s.strip().lower()
    return True if t in {"true", "t", "yes", "y", "1"} else False if t in {"false", "f", "no", "n", "0"} else None


def squad_normalize(s: Any) -> str:
    """Lowercase, punctuation deleted (not replaced by a space), articles dropped, one space."""
    if not isinstance(s, str):
        return ""
    return " ".join(w for w in s.lower().translate(_NO_PUNCT).split() if w not in _ARTICLES)


def is_empty_like(s: Any) -> bool:
    return squad_normalize(s) in EMPTY_LIKE


def _as_list(golds: Any) -> list:
    return golds if isinstance(golds, list) else [golds]


def squad_em(pred: str, golds: Any) -> int:
    p = squad_normalize(pred)
    return int(any(p == squad_normalize(str(g)) for g in _as_list(golds)))


def squad_f1(pred: str, golds: Any) -> float:
    p = squad_normalize(pred).split()
    best = 0.0
    for g in _as_list(golds):
        t = squad_normalize(str(g)).split()
        if not p or not t:
            best = max(best, float(not p and not t))
            continue
        same = sum((Counter(p) & Counter(t)).values())
        if same:
            prec, rec = same / len(p), same / len(t)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


def gold_value(task_type: str, gold: Any) -> Any:
    """The study's gold from a dataset answer: ARC ``arc_option(str(gold))`` (a digit gold gives
    None), BoolQ ``str(gold).strip().lower() == "true"``, SQuAD the value as is (the first gold
    string, "" when unanswerable), OpenMath ``str(gold).strip()``."""
    if task_type == "mcq4":
        return arc_option(str(gold))
    if task_type == "boolq":
        return str(gold).strip().lower() == "true"
    if task_type == "squad_v2":
        return gold
    return str(gold).strip()


def prediction(task_type: str, output: str) -> Any:
    """The study's prediction from a raw model output (ARC letter / bool / text; None or "")."""
    boxed = first_boxed(output)
    if task_type == "mcq4":
        return arc_option(boxed)
    if task_type == "boolq":
        return yes_no(boxed)
    return (boxed or "").strip()  # SQuAD and numeric: no box is ""


# ---------------------------------------------------------------------------------------------
# Metrics (the study's compute_metrics): returns the block and each item's correct flag

def _mcq4(golds: list, preds: list) -> tuple[dict, list[bool]]:
    correct = [p is not None and p == g for g, p in zip(golds, preds)]
    cm = {g: {p: 0 for p in _ARC} for g in _ARC}
    for g, p in zip(golds, preds):
        if g in cm and p in cm:  # only pairs where both are A-D
            cm[g][p] += 1
    per_class, f1s = {}, []
    for c in _ARC:
        tp = cm[c][c]
        fp = sum(cm[r][c] for r in _ARC) - tp
        fn = sum(cm[c].values()) - tp
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[c] = {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4)}
        f1s.append(f1)
    return {"macro_f1": round(sum(f1s) / len(f1s), 4), "per_class": per_class, "confusion_matrix": cm}, correct


def _boolq(golds: list, preds: list) -> tuple[dict, list[bool]]:
    tp = tn = fp = fn = 0
    for g, p in zip(golds, preds):
        said_yes = (not g) if p is None else p  # no answer: the wrong class
        tp += g and said_yes
        tn += (not g) and not said_yes
        fp += (not g) and said_yes
        fn += g and not said_yes
    f1 = _f1(tp / (tp + fp) if tp + fp else 0.0, tp / (tp + fn) if tp + fn else 0.0)
    f1_n = _f1(tn / (tn + fn) if tn + fn else 0.0, tn / (tn + fp) if tn + fp else 0.0)
    tpr = tp / (tp + fn) if tp + fn else 0.0
    tnr = tn / (tn + fp) if tn + fp else 0.0
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    block = {"f1_pos": round(f1, 4), "macro_f1": round((f1 + f1_n) / 2, 4),
             "balanced_accuracy": round((tpr + tnr) / 2, 4),
             "MCC": round((tp * tn - fp * fn) / denom if denom > 0 else 0.0, 4),
             "confusion_matrix": {"TP": tp, "TN": tn, "FP": fp, "FN": fn}}
    return block, [p is not None and p == g for g, p in zip(golds, preds)]


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _mean(x: list) -> float:
    return sum(x) / len(x) if x else 0.0


def _squad(golds: list, preds: list) -> tuple[dict, list[bool]]:
    ems = [squad_em(p, g) for g, p in zip(golds, preds)]
    f1s = [squad_f1(p, g) for g, p in zip(golds, preds)]
    has_g = [not all(is_empty_like(str(x)) for x in _as_list(g)) for g in golds]
    has_p = [not is_empty_like(p) for p in preds]
    has_i = [i for i, h in enumerate(has_g) if h]
    no_i = [i for i, h in enumerate(has_g) if not h]
    avna = sum(g == p for g, p in zip(has_g, has_p))
    return {"EM": round(_mean(ems) * 100, 2), "F1": round(_mean(f1s) * 100, 2),
            "HasAns_EM": round(_mean([ems[i] for i in has_i]) * 100, 2),
            "HasAns_F1": round(_mean([f1s[i] for i in has_i]) * 100, 2),
            "NoAns_Accuracy": round(_mean([float(not has_p[i]) for i in no_i]) * 100, 2),
            "AvNA_Accuracy": round(avna / len(golds) * 100 if golds else 0.0, 2)}, [bool(e) for e in ems]


def _numeric(golds: list, preds: list) -> tuple[dict, list[bool]]:
    correct, diffs = [], []
    for g, p in zip(golds, preds):
        try:
            gold = float(g)
            pred = float(p) if p is not None and p != "" else None
        except (TypeError, ValueError):
            correct.append(False)
            continue
        correct.append(pred is not None and abs(gold - pred) < 1e-4)
        if pred is not None:
            diffs.append(abs(gold - pred))
    # The study: the mean over converted predictions (it divides by zero when none converted).
    return {"avg_abs_diff": round(sum(diffs) / len(diffs), 6) if diffs else None}, correct


_SCORERS = {"mcq4": _mcq4, "boolq": _boolq, "squad_v2": _squad, "math_numeric": _numeric}


def compute_metrics(task_type: str, golds: list, preds: list) -> tuple[dict, list[bool]]:
    """The study's ``correct`` / ``incorrect`` / ``accuracy`` (percent, 2 decimals) / ``metrics``
    block for golds and predictions in the study's form (``gold_value``, ``prediction``), and
    each item's correct flag (SQuAD: EM). ``task_type``: mcq4 | boolq | squad_v2 | math_numeric."""
    if len(golds) != len(preds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold answers")
    block, correct = _SCORERS[task_type](golds, preds)
    n, n_ok = len(golds), sum(correct)
    if task_type == "squad_v2":
        accuracy = block["EM"]
    else:
        accuracy = round(n_ok / n * 100 if n else 0.0, 2)
    return {"correct": n_ok, "incorrect": n - n_ok, "accuracy": accuracy,
            "metrics": {"task": TITLES[task_type], **block, "support": n}}, correct


# ---------------------------------------------------------------------------------------------
# Cost statistics (the study's calculate_latency_metrics / calculate_token_metrics)

def _first_mode(values: list) -> Any:
    return statistics.mode(values) if values else None  # the first of tied modes (Python >= 3.8)


def latency_stats(latencies: list[float]) -> dict[str, Any]:
    """Seconds: per_prompt/sum/mean/median/std rounded to 4 decimals, std the SAMPLE standard
    deviation (0.0 for one value), mode over latencies rounded to 3 decimals."""
    if not latencies:
        return {"sum": 0, "mean": 0, "median": 0, "mode": None, "std": 0}
    total = float(sum(latencies))
    return {"per_prompt": [round(x, 4) for x in latencies], "sum": round(total, 4),
            "mean": round(total / len(latencies), 4), "median": round(statistics.median(latencies), 4),
            "mode": _first_mode([round(x, 3) for x in latencies]),
            "std": round(statistics.stdev(latencies), 4) if len(latencies) > 1 else 0.0}


def token_stats(tokens: list[int]) -> dict[str, Any]:
    """Token counts: sum (int), mean/median/std (sample) rounded to 2 decimals, mode of the counts."""
    if not tokens:
        return {"sum": 0, "mean": 0, "median": 0, "mode": None, "std": 0}
    total = int(sum(tokens))
    return {"per_prompt": list(tokens), "sum": total, "mean": round(total / len(tokens), 2),
            "median": round(statistics.median(tokens), 2), "mode": _first_mode(list(tokens)),
            "std": round(statistics.stdev(tokens), 2) if len(tokens) > 1 else 0.0}


# ---------------------------------------------------------------------------------------------
# One task, from raw outputs

def score_outputs(task_type: str, outputs: list[str | None], golds: list) -> dict[str, Any]:
    """The study's scores of raw model outputs: ``total_samples``, ``format_success_rate`` (percent
    with a first ``\\boxed{}``), ``correct``, ``incorrect``, ``accuracy``, ``metrics``, plus
    ``items`` ([{"parsed", "correct"}]: ``parsed`` the study's prediction, None when unboxed).
    ``golds``: dataset answers (SQuAD: the first gold string, "" when unanswerable)."""
    preds = [prediction(task_type, o) for o in outputs]
    study_golds = [gold_value(task_type, g) for g in golds]
    res, correct = compute_metrics(task_type, study_golds, preds)
    n = len(outputs)
    boxed = [first_boxed(o) for o in outputs]
    parsed = [None if b is None else p for b, p in zip(boxed, preds)]
    return {"type": task_type, "total_samples": n,
            "format_success_rate": round(sum(b is not None for b in boxed) / n * 100 if n else 0.0, 2),
            "correct": res["correct"], "incorrect": res["incorrect"], "accuracy": res["accuracy"],
            "metrics": res["metrics"],
            "items": [{"parsed": p, "correct": bool(c)} for p, c in zip(parsed, correct)]}


def dataset_block(task_type: str, outputs: list[str], golds: list, latencies: list[float],
                  tokens: list[int]) -> dict[str, Any]:
    """A task's block in the study's metrics.json layout, scored the study's way."""
    out = score_outputs(task_type, outputs, golds)
    out.pop("items")
    return out | {"latency_seconds": latency_stats(latencies), "tokens_generated": token_stats(tokens)}


def summary(blocks: dict[str, dict], latencies: list[float], tokens: list[int]) -> dict[str, Any]:
    """The study's ``summary`` over every task."""
    n = sum(b["total_samples"] for b in blocks.values())
    ok = sum(b["correct"] for b in blocks.values())
    return {"num_datasets": len(blocks), "total_samples": n, "total_correct": ok,
            "total_incorrect": sum(b["incorrect"] for b in blocks.values()),
            "overall_accuracy": round(ok / n * 100 if n else 0.0, 2),
            "latency_seconds": latency_stats(latencies), "tokens_generated": token_stats(tokens)}
