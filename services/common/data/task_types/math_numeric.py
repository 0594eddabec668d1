r"""A single number (``math_numeric``): OpenMathInstruct-2's problems whose expected answer is a
number. ``1,234``, ``$5``, ``\frac{3}{4}``, ``50\%``, ``5 cm`` all parse; one canonical spelling
per value.

ftlab profile: accuracy (|pred - gold| <= 1e-4), mean and median absolute distance over the parsed
answers. Study profile: plain ``float()`` of the first boxed text, correct iff |diff| < 1e-4.
"""
from __future__ import annotations

import math
import numbers
import re
import warnings
from typing import Any, Mapping

import numpy as np

from services.common.data.task_types.base import (MISSING_FIELD, NON_NUMERIC_GOLD, Dropped, TaskType, check_lengths, common,
                                             text, unwrap)

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_FRAC = r"\\frac\s*\{\s*(" + _NUM + r")\s*\}\s*\{\s*(" + _NUM + r")\s*\}"


def _div(a: str, b: str) -> float | None:
    return float(a) / float(b) if float(b) != 0 else None


def parse_number(s: str) -> float | None:
    r"""``1,234``, ``$5``, ``5.0``, ``-2``, ``3/4``, ``\frac{3}{4}``, ``\dfrac``, ``2\frac{1}{2}``,
    ``50\%``, ``5 cm``, ``x = 5`` → float; anything else (expressions, intervals, words) → None."""
    s = unwrap(s)
    s = re.sub(r"\\(?:text|mathrm|mbox)\s*\{([^{}]*)\}", r" \1", s)
    for junk in ("\\!", "\\,", "\\;", "\\ ", "\\$", "$", "\\%", "%", "^{\\circ}", "^\\circ", "°", "{,}"):
        s = s.replace(junk, "," if junk == "{,}" else "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"^[A-Za-z]\w*\s*=\s*", "", s.strip())  # "x = 5"
    s = re.sub(r"\\frac(\d)(\d)$", r"\\frac{\1}{\2}", s)  # LaTeX shorthand \frac34
    s = re.sub(r"^([-+])\s+", r"\1", s.strip())
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    if m := re.fullmatch(r"(" + _NUM + r")(?:\s+[A-Za-z][A-Za-z .]*)?", s):  # a number, maybe with units
        value = float(m.group(1))
    elif m := re.fullmatch(r"(" + _NUM + r")\s*/\s*(" + _NUM + r")", s):
        value = _div(m.group(1), m.group(2))
    elif m := re.fullmatch(r"([-+]?)" + _FRAC, s):
        value = _div(m.group(2), m.group(3))
        value = -value if value is not None and m.group(1) == "-" else value
    elif m := re.fullmatch(r"([-+]?)(\d+)\s*" + _FRAC, s):  # mixed number 2\frac{1}{2}
        frac = _div(m.group(3), m.group(4))
        value = None if frac is None else (int(m.group(2)) + frac) * (-1 if m.group(1) == "-" else 1)
    else:
        return None
    return value if value is not None and math.isfinite(value) else None


def canonical_number(x: float | None) -> str | None:
    """One spelling per value: integers without ".0", others as Python's shortest repr."""
    if x is None or not math.isfinite(float(x)):
        return None
    x = float(x)
    if x == 0:
        return "0"  # no "-0"
    if x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return repr(x)


def score_numeric(preds: list[str | None], golds: list[str], tol: float = 1e-4) -> dict:
    """Accuracy (|pred - gold| <= tol, absolute), and like the study avg_abs_diff over the parsed
    answers only (a None prediction has no distance), plus median_abs_diff and the parsed count.
    Distances are None when nothing parsed."""
    check_lengths(preds, golds)
    diffs = [abs(float(p) - float(g)) if p is not None else None for p, g in zip(preds, golds)]
    correct = [d is not None and d <= tol for d in diffs]
    parsed = [d for d in diffs if d is not None]
    return {**common(correct, preds),
            "avg_abs_diff": round(float(np.mean(parsed)), 6) if parsed else None,
            "median_abs_diff": round(float(np.median(parsed)), 6) if parsed else None,
            "parsed": len(parsed)}


class NumericAnswer(TaskType):
    name = "math_numeric"
    columns = ("id", "question", "answer")
    block_keys = ("avg_abs_diff", "median_abs_diff", "parsed", "support")
    ci_metrics = ("accuracy", "avg_abs_diff", "median_abs_diff", "format_success_rate")
    lead_metrics = ("format_success_rate", "accuracy", "avg_abs_diff")
    default_metrics = (("avg_abs_diff", False), ("accuracy", True), ("median_abs_diff", False))
    study_title = "OpenMathInstruct-2 (numeric)"
    profile_note = ("ftlab reads the last complete \\boxed{} and parses 1,234, $5, \\frac{3}{4}, 50\\%, units; "
                    "correct iff |diff| <= 1e-4. The study applies float() to the first \\boxed{ up to the first } "
                    "(anything else is wrong) and counts |diff| < 1e-4.")
    gold_kind = "a number"
    filters = ("plain_number_gold",)

    def normalise(self, task, value: Any) -> str | None:
        number = value if isinstance(value, numbers.Real) and not isinstance(value, bool) else parse_number(str(value))
        return canonical_number(number)

    def import_row(self, task, rec: Mapping[str, Any]) -> dict:
        question = text(rec.get("question", rec.get("problem"))).strip()
        gold = rec.get("answer", rec.get("expected_answer"))
        if not question or gold is None or text(gold).strip() == "":
            raise Dropped(MISSING_FIELD)
        answer = self.normalise(task, gold)
        if answer is None:
            raise Dropped(NON_NUMERIC_GOLD)
        return {"id": text(rec.get("id")), "question": question, "answer": answer}

    def score(self, preds: list, golds: list, labels=None) -> dict:
        return score_numeric(preds, golds)

    def item_columns(self, preds: list, golds: list, labels=None) -> dict[str, np.ndarray]:
        diff = np.array([abs(float(p) - float(g)) if p is not None and g is not None else np.nan
                         for p, g in zip(preds, golds)])
        return {"correct": np.nan_to_num(diff, nan=np.inf) <= 1e-4, "diff": diff}

    def resampled(self, cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
        d = cols["diff"][idx]
        with warnings.catch_warnings():  # a resample with no parsed answer: NaN, not a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            return {"avg_abs_diff": np.nanmean(d, 1), "median_abs_diff": np.nanmedian(d, 1)}

    def study_score(self, golds: list, preds: list) -> tuple[dict, list[bool]]:
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
