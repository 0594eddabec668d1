r"""Yes/no about a passage (``boolq``, the study's kind name): the answer is True or False.

ftlab profile: accuracy, F1 of "True", macro-F1, balanced accuracy, MCC (scikit-learn's
definitions; a missing answer counts as the wrong class). Study profile: the study's parser
(true/t/yes/y/1, false/f/no/n/0 in the first box) and its balanced accuracy over both classes.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from services.common.data.task_types.base import TaskType, check_lengths, common, f1, text, unwrap


def normalise_bool(value: Any) -> str | None:
    """True / "true" / "Yes." / "\\text{yes}" → "True"; False / "false" / "no" → "False"; else None."""
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    s = unwrap(str(value)).strip().strip(".!").strip().lower()
    return {"true": "True", "yes": "True", "false": "False", "no": "False"}.get(s)


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
    Golds are "True" / "False" (``normalise_bool``)."""
    check_lengths(preds, golds)
    correct = [p is not None and p == g for p, g in zip(preds, golds)]
    c = binary_counts(preds, golds)
    tp, tn, fp, fn = c["TP"], c["TN"], c["FP"], c["FN"]
    f1_pos = f1(tp / (tp + fp) if tp + fp else 0.0, tp / (tp + fn) if tp + fn else 0.0)
    f1_neg = f1(tn / (tn + fn) if tn + fn else 0.0, tn / (tn + fp) if tn + fp else 0.0)
    # balanced accuracy: mean recall over the classes that occur among the golds
    recalls = ([tp / (tp + fn)] if tp + fn else []) + ([tn / (tn + fp)] if tn + fp else [])
    denom = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    return {**common(correct, preds), "f1_pos": round(f1_pos, 4), "macro_f1": round((f1_pos + f1_neg) / 2, 4),
            "balanced_accuracy": round(float(np.mean(recalls)), 4) if recalls else 0.0,
            "MCC": round((tp * tn - fp * fn) / denom, 4) if denom else 0.0, "confusion_matrix": c}


def yes_no(s: str | None) -> bool | None:
    """The study's parser."""
    if s is None:
        return None
    t = s.strip().lower()
    return True if t in {"true", "t", "yes", "y", "1"} else False if t in {"false", "f", "no", "n", "0"} else None


class YesNo(TaskType):
    name = "boolq"
    columns = ("id", "context", "question", "answer")
    block_keys = ("f1_pos", "macro_f1", "balanced_accuracy", "MCC", "confusion_matrix", "support")
    ci_metrics = ("accuracy", "f1_pos", "balanced_accuracy", "MCC", "format_success_rate")
    lead_metrics = ("format_success_rate", "accuracy", "MCC")
    default_metrics = (("MCC", True), ("accuracy", True), ("f1_pos", True), ("balanced_accuracy", True),
                       ("macro_f1", True))
    study_title = "BoolQ (binary)"
    profile_note = ("ftlab reads the last complete \\boxed{} (true/false/yes/no); balanced accuracy averages the "
                    "classes present among the golds. The study reads the first box (true/t/yes/y/1, "
                    "false/f/no/n/0) and averages both recalls, 0 for a class absent from the golds.")
    gold_kind = "true/false or yes/no"

    def normalise(self, task, value: Any) -> str | None:
        return normalise_bool(value)

    def import_row(self, task, rec: Mapping[str, Any]) -> dict | None:
        # HF schema (google/boolq): question, passage, answer (bool); the study's seed: context for passage.
        question = text(rec.get("question")).strip()
        answer = normalise_bool(rec.get("answer")) if rec.get("answer") is not None else None
        if not question or answer is None:
            return None
        return {"id": text(rec.get("id")), "context": text(rec.get("passage", rec.get("context"))),
                "question": question, "answer": answer}

    def score(self, preds: list, golds: list, labels=None) -> dict:
        return score_boolq(preds, golds)

    def item_columns(self, preds: list, golds: list, labels=None) -> dict[str, np.ndarray]:
        c = np.array([p is not None and p == g for p, g in zip(preds, golds)])
        gold = np.array([g == "True" for g in golds])
        return {"correct": c, "gold_pos": gold, "pred_pos": np.where(c, gold, ~gold)}

    def resampled(self, cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
        # as score_boolq, from the confusion counts of each resample
        g, p = cols["gold_pos"][idx], cols["pred_pos"][idx]
        tp, tn = (g & p).sum(1).astype(float), (~g & ~p).sum(1).astype(float)
        fp, fn = (~g & p).sum(1).astype(float), (g & ~p).sum(1).astype(float)
        out = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            prec, rec = np.where(tp + fp > 0, tp / (tp + fp), 0.0), np.where(tp + fn > 0, tp / (tp + fn), 0.0)
            out["f1_pos"] = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
            rec_n = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
            classes = (tp + fn > 0).astype(float) + (tn + fp > 0)
            out["balanced_accuracy"] = np.where(classes > 0, (rec + rec_n) / np.maximum(classes, 1), 0.0)
            denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
            out["MCC"] = np.where(denom > 0, (tp * tn - fp * fn) / np.where(denom > 0, denom, 1), 0.0)
        return out

    def study_prediction(self, boxed: str | None) -> Any:
        return yes_no(boxed)

    def study_gold(self, gold: Any) -> Any:
        return str(gold).strip().lower() == "true"

    def study_input_gold(self, task, gold: Any) -> Any:
        return normalise_bool(gold)  # "yes" / true / "True" → "True", as study_gold reads it

    def study_score(self, golds: list, preds: list) -> tuple[dict, list[bool]]:
        tp = tn = fp = fn = 0
        for g, p in zip(golds, preds):
            said_yes = (not g) if p is None else p  # no answer: the wrong class
            tp += g and said_yes
            tn += (not g) and not said_yes
            fp += (not g) and said_yes
            fn += g and not said_yes
        f1_p = f1(tp / (tp + fp) if tp + fp else 0.0, tp / (tp + fn) if tp + fn else 0.0)
        f1_n = f1(tn / (tn + fn) if tn + fn else 0.0, tn / (tn + fp) if tn + fp else 0.0)
        tpr = tp / (tp + fn) if tp + fn else 0.0
        tnr = tn / (tn + fp) if tn + fp else 0.0
        denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        block = {"f1_pos": round(f1_p, 4), "macro_f1": round((f1_p + f1_n) / 2, 4),
                 "balanced_accuracy": round((tpr + tnr) / 2, 4),
                 "MCC": round((tp * tn - fp * fn) / denom if denom > 0 else 0.0, 4),
                 "confusion_matrix": {"TP": tp, "TN": tn, "FP": fp, "FN": fn}}
        return block, [p is not None and p == g for g, p in zip(golds, preds)]
