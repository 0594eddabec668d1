r"""Multiple choice (``mcq4``): the answer is an option letter. ARC-Challenge is one (4 options
A-D, a few numbered 1-4); the task YAML's ``labels`` sets the letters.

ftlab profile: accuracy and macro-F1 over the task's labels (scikit-learn's definition). Study
profile: the study's ARC parser (first ``\boxed{`` up to the first ``}``, first A-D character of
the upper-cased answer) and its macro-F1 over A-D on the items where gold and prediction are A-D.
"""
from __future__ import annotations

import re
import string
from typing import Any, Mapping

import numpy as np

from services.common.data.task_types.base import (DEFAULT_LABELS, INVALID_GOLD, MISSING_FIELD, Dropped, TaskType,
                                             check_lengths, common, f1, text, unwrap)

LABELS = DEFAULT_LABELS
_STUDY_LABELS = ("A", "B", "C", "D")  # the study's parser knows A-D only


def normalise_option(s: str, labels: tuple[str, ...] = LABELS) -> str | None:
    """"B", "(B)", "B.", "b", "B) text", "Option B", "2" → the option letter; anything else → None."""
    s = re.sub(r"^(?:option|answer|choice)\s*[:\-]?\s*", "", unwrap(s), flags=re.I)
    if m := re.fullmatch(r"\((\w+)\)(\s.*)?", s, re.S):
        token = m.group(1)
    elif m := re.fullmatch(r"([A-Za-z]|\d+)(?:[.):](.*)|(\s.*))?", s, re.S):
        token = m.group(1)
        # "a ball..." is prose, not option A: a bare letter followed by text must be uppercase
        if m.group(3) is not None and token.islower():
            return None
    else:
        return None
    if token.isdigit():
        i = int(token)
        return labels[i - 1] if 1 <= i <= len(labels) else None
    token = token.upper()
    return token if token in labels else None


def score_mcq4(preds: list[str | None], golds: list[str | None], labels: tuple[str, ...] = LABELS) -> dict:
    """Accuracy (percent), macro-F1 over the task's label set (0..1), per-class precision/recall/F1
    and the confusion matrix (rows gold, columns prediction).

    Definition: scikit-learn's ``f1_score(golds, preds, labels=labels, average="macro",
    zero_division=0)`` — every label of the task counts, one that occurs in neither golds nor
    predictions has F1 0. A None prediction (format failure) or a letter outside ``labels`` is a
    miss for the gold's class (lowers its recall, no class gains a false positive) and is not a
    column of the confusion matrix. Checked against scikit-learn in tests/unit/test_scoring.py.
    """
    check_lengths(preds, golds)
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
        per_class[c] = {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1(prec, rec), 4)}
        f1s.append(f1(prec, rec))
    return {**common(correct, preds), "macro_f1": round(float(np.mean(f1s)), 4) if f1s else 0.0,
            "per_class": per_class, "confusion_matrix": cm}


def arc_option(s: str | None) -> str | None:
    """The study's ARC parser: upper-cased; one character: itself if A-D; longer: its first A-D
    character; else None."""
    if s is None:
        return None
    t = s.strip().upper()
    if len(t) == 1:
        return t if t in _STUDY_LABELS else None
    return next((c for c in t if c in _STUDY_LABELS), None)


class MultipleChoice(TaskType):
    name = "mcq4"
    columns = ("id", "question", "answer")
    block_keys = ("macro_f1", "per_class", "confusion_matrix", "support")
    ci_metrics = ("accuracy", "macro_f1", "format_success_rate")
    lead_metrics = ("format_success_rate", "accuracy", "macro_f1")
    default_metrics = (("macro_f1", True), ("accuracy", True))
    study_title = "ARC (4-way MCQ)"
    profile_note = ("ftlab reads the last complete \\boxed{} and accepts (B), B., Option B and 1-4 for A-D; the study "
                    "reads the first \\boxed{ up to the first }, takes the first A-D character of the upper-cased "
                    "answer (\"the answer is C\" gives A) and gives digits no answer. ftlab's macro-F1 averages "
                    "every label of the task (the YAML's), a format failure a miss of the gold's class; the "
                    "study's averages A-D over the items where gold and prediction are both A-D.")
    uses_labels = True
    strata = {"answer": lambda row: row["answer"]}

    def gold_kind_of(self, task) -> str:
        return f"one of {list(task.labels)} or 1-{len(task.labels)}"

    def normalise(self, task, value: Any) -> str | None:
        return normalise_option(str(value), task.labels)

    def strata_names(self, task, strat: str) -> list[str] | None:
        return list(task.labels) if task is not None else None

    def import_row(self, task, rec: Mapping[str, Any]) -> dict:
        question = text(rec.get("question")).strip()
        gold: Any = rec.get("answerKey", rec.get("answer"))
        choices = rec.get("choices")
        if choices is not None:
            # Inline the options exactly as the study's seed does: "<question> A. <text> B. <text> ..."
            if isinstance(choices, Mapping):
                labels, texts = [str(x) for x in choices["label"]], list(choices["text"])
            else:
                texts = list(choices)
                labels = list(string.ascii_uppercase[:len(texts)])
            question = question + " " + " ".join(f"{lab}. {txt}" for lab, txt in zip(labels, texts))
            # The gold is an option label (A–D, or 1–4 on a few ARC items) or a 0-based index.
            if isinstance(gold, (int, np.integer)) and not isinstance(gold, bool):
                gold = string.ascii_uppercase[int(gold)] if 0 <= int(gold) < 26 else None
            elif text(gold) in labels:
                gold = string.ascii_uppercase[labels.index(text(gold))]
        if not question or gold is None or text(gold).strip() == "":
            raise Dropped(MISSING_FIELD)
        answer = self.normalise(task, text(gold))
        if answer is None:
            raise Dropped(INVALID_GOLD)
        return {"id": text(rec.get("id") or rec.get("title")), "question": question, "answer": answer}

    def score(self, preds: list, golds: list, labels: tuple[str, ...] = LABELS) -> dict:
        return score_mcq4(preds, golds, labels)

    def item_columns(self, preds: list, golds: list, labels: tuple[str, ...] = LABELS) -> dict[str, np.ndarray]:
        # macro-F1 over the task's full label set, as the scorer
        code = {c: i for i, c in enumerate(labels)}
        return {"correct": np.array(score_mcq4(preds, golds, labels)["correct"]), "n_labels": np.array(len(labels)),
                "pred": np.array([code.get(p, -1) for p in preds]), "gold": np.array([code.get(g, -1) for g in golds])}

    def resampled(self, cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
        pred, gold = cols["pred"][idx], cols["gold"][idx]
        f1s = []
        for c in range(int(cols["n_labels"])):
            tp = ((pred == c) & (gold == c)).sum(1)
            npred, nact = (pred == c).sum(1), (gold == c).sum(1)
            prec, rec = np.where(npred > 0, tp / np.maximum(npred, 1), 0.0), np.where(nact > 0, tp / np.maximum(nact, 1), 0.0)
            f1s.append(np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0))
        return {"macro_f1": np.stack(f1s).mean(0) if f1s else np.zeros(idx.shape[0])}

    def study_prediction(self, boxed: str | None) -> Any:
        return arc_option(boxed)

    def study_gold(self, gold: Any) -> Any:
        return arc_option(str(gold))  # a digit gold gives None

    def study_score(self, golds: list, preds: list) -> tuple[dict, list[bool]]:
        correct = [p is not None and p == g for g, p in zip(golds, preds)]
        cm = {g: {p: 0 for p in _STUDY_LABELS} for g in _STUDY_LABELS}
        for g, p in zip(golds, preds):
            if g in cm and p in cm:  # only pairs where both are A-D
                cm[g][p] += 1
        per_class, f1s = {}, []
        for c in _STUDY_LABELS:
            tp = cm[c][c]
            fp = sum(cm[r][c] for r in _STUDY_LABELS) - tp
            fn = sum(cm[c].values()) - tp
            prec = tp / (tp + fp) if tp + fp else 0.0
            rec = tp / (tp + fn) if tp + fn else 0.0
            f = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
            per_class[c] = {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f, 4)}
            f1s.append(f)
        return {"macro_f1": round(sum(f1s) / len(f1s), 4), "per_class": per_class, "confusion_matrix": cm}, correct
