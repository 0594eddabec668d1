r"""Extractive QA that may be unanswerable (``squad_v2``): the answer is a span of the passage, or
an abstention. Golds are lists (column ``answers``; ``[]`` = unanswerable); the model writes
``\boxed{unanswerable}`` to abstain.

ftlab profile: the official SQuAD v2 script's EM / F1 (max over every gold), HasAns / NoAns /
AvNA. Study profile: the study's scorer (first gold only, an unboxed answer abstains, its
empty-like set decides answerable vs not).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Mapping

import numpy as np

from services.common.data.task_types.base import MISSING_FIELD, Dropped, TaskType, check_lengths, common, pct, text, unwrap

# What the model writes for "no answer in the passage"; the parser maps it (and the study's other
# empty-like answers) to "", an abstention. Only PREDICTIONS are mapped: a gold is unanswerable
# only when the dataset says so (an empty list of answers), never because its text is "None".
UNANSWERABLE = "unanswerable"
EMPTY_LIKE = frozenset({"", "unanswerable", "unknown", "no answer", "none", "null", "n/a", "empty"})
STUDY_EMPTY_LIKE = frozenset({"", "unanswerable", "unknown", "no answer", "n a", "none", "null"})
_PUNCT = frozenset(string.punctuation)
_ARTICLES = frozenset({"a", "an", "the"})
_NO_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_span(s: str) -> str:
    s = unwrap(s)
    return "" if s.lower().strip(" .!\"'") in EMPTY_LIKE else s


# ---------------------------------------------------------------------------------------------
# The official evaluation script's definitions (rajpurkar/SQuAD-explorer, evaluate-v2.0.py:
# normalize_answer, compute_exact, compute_f1, max over gold answers)

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
    check_lengths(preds, golds)
    items = [squad_item(p, g) for p, g in zip(preds, golds)]
    em = [e for e, _, _ in items]
    f1 = [f for _, f, _ in items]
    has = [h for _, _, h in items]
    avna = [p is not None and bool(normalize_squad(p)) == h for p, h in zip(preds, has)]
    n_has = sum(has)
    n_no = len(golds) - n_has
    return {**common(em, preds),
            "EM": pct(sum(em), len(golds)), "F1": pct(sum(f1), len(golds)),
            "HasAns_EM": pct(sum(e for e, h in zip(em, has) if h), n_has),
            "HasAns_F1": pct(sum(f for f, h in zip(f1, has) if h), n_has),
            "NoAns_Accuracy": pct(sum(e for e, h in zip(em, has) if not h), n_no),
            "AvNA_Accuracy": pct(sum(avna), len(golds))}


def _ratio(num: np.ndarray, den: np.ndarray, scale: float = 100.0) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, scale * num / np.maximum(den, 1), np.nan)


# ---------------------------------------------------------------------------------------------
# The study's scorer

def study_normalize(s: Any) -> str:
    """The study's: lowercase, punctuation deleted (not replaced by a space), articles dropped, one space."""
    if not isinstance(s, str):
        return ""
    return " ".join(w for w in s.lower().translate(_NO_PUNCT).split() if w not in _ARTICLES)


def is_empty_like(s: Any) -> bool:
    return study_normalize(s) in STUDY_EMPTY_LIKE


def _as_list(golds: Any) -> list:
    return golds if isinstance(golds, list) else [golds]


def study_em(pred: str, golds: Any) -> int:
    p = study_normalize(pred)
    return int(any(p == study_normalize(str(g)) for g in _as_list(golds)))


def study_f1(pred: str, golds: Any) -> float:
    p = study_normalize(pred).split()
    best = 0.0
    for g in _as_list(golds):
        t = study_normalize(str(g)).split()
        if not p or not t:
            best = max(best, float(not p and not t))
            continue
        same = sum((Counter(p) & Counter(t)).values())
        if same:
            prec, rec = same / len(p), same / len(t)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


def _mean(x: list) -> float:
    return sum(x) / len(x) if x else 0.0


class ExtractiveQA(TaskType):
    name = "squad_v2"
    columns = ("id", "title", "context", "question", "answer", "answers")
    # A SQuAD set imported before ``answers`` existed falls back to its single ``answer``.
    optional_columns = frozenset({"answers"})
    block_keys = ("EM", "F1", "HasAns_EM", "HasAns_F1", "NoAns_Accuracy", "AvNA_Accuracy", "support")
    ci_metrics = ("accuracy", "EM", "F1", "HasAns_EM", "HasAns_F1", "NoAns_Accuracy", "AvNA_Accuracy",
                  "format_success_rate")
    lead_metrics = ("format_success_rate", "F1", "NoAns_Accuracy", "HasAns_F1")
    default_metrics = (("F1", True), ("EM", True), ("accuracy", True))
    study_title = "SQuAD v2"
    profile_note = ("ftlab scores the best of ALL gold answers (the official script) and an unboxed answer as a "
                    "format failure; the study scores the first gold only, an unboxed answer as an abstention, "
                    "a gold reading None/unknown/null as unanswerable, and \\boxed{unanswerable} as EM 0 against "
                    "an unanswerable gold (its empty-like set covers NoAns/AvNA only).")
    multi_gold = True
    no_answer_target = UNANSWERABLE
    leakage_pair = True
    strata = {"answerable": lambda row: "answerable" if len(row["answers"]) else "unanswerable"}

    def normalise(self, task, value: Any) -> str | None:
        return normalise_span(str(value))

    def strata_names(self, task, strat: str) -> list[str] | None:
        return ["answerable", "unanswerable"]

    def import_row(self, task, rec: Mapping[str, Any]) -> dict:
        if "answer" not in rec and "answers" not in rec:
            raise Dropped(MISSING_FIELD)
        answers = _gold_texts(rec)
        row = {"id": text(rec.get("id")), "title": text(rec.get("title")), "context": text(rec.get("context")),
               "question": text(rec.get("question")).strip(), "answer": answers[0] if answers else "",
               "answers": answers}
        if not row["context"] or not row["question"]:
            raise Dropped(MISSING_FIELD)
        return row

    def score(self, preds: list, golds: list, labels=None) -> dict:
        return score_squad_v2(preds, golds)

    def canonical_gold(self, task, gold: Any) -> Any:
        return as_gold_list(gold)

    def gold_problem(self, task, gold: Any) -> str | None:
        ok = isinstance(gold, str) or (isinstance(gold, list) and all(isinstance(g, str) for g in gold))
        return None if ok else f"gold must be a string or a list of strings, got {gold!r}"

    def item_columns(self, preds: list, golds: list, labels=None) -> dict[str, np.ndarray]:
        items = [squad_item(p, g) for p, g in zip(preds, golds)]
        has = np.array([h for _, _, h in items], dtype=bool)
        return {"correct": np.array([e for e, _, _ in items], dtype=bool), "has": has,
                "f1": np.array([f for _, f, _ in items], dtype=float),
                "avna": np.array([p is not None and bool(normalize_squad(p)) == h for p, h in zip(preds, has)])}

    def resampled(self, cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
        n = idx.shape[1]
        has = cols["has"][idx]
        em, f1 = cols["correct"][idx], cols["f1"][idx]
        return {"EM": 100.0 * em.mean(1), "F1": 100.0 * f1.mean(1),
                "HasAns_EM": _ratio((em & has).sum(1), has.sum(1)), "HasAns_F1": _ratio((f1 * has).sum(1), has.sum(1)),
                "NoAns_Accuracy": _ratio((em & ~has).sum(1), n - has.sum(1)),
                "AvNA_Accuracy": 100.0 * cols["avna"][idx].mean(1)}

    def study_gold(self, gold: Any) -> Any:
        return gold  # the first gold string, "" when unanswerable

    def study_input_gold(self, task, gold: Any) -> Any:
        return (as_gold_list(gold) or [""])[0]  # the study kept the first gold only

    def study_score(self, golds: list, preds: list) -> tuple[dict, list[bool]]:
        ems = [study_em(p, g) for g, p in zip(golds, preds)]
        f1s = [study_f1(p, g) for g, p in zip(golds, preds)]
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

    def study_accuracy(self, block: dict, n_correct: int, n: int) -> float:
        return block["EM"]


def _gold_texts(rec: Mapping[str, Any]) -> list[str]:
    """Every gold answer in dataset order; [] when the dataset marks the question unanswerable.
    Golds are never mapped through the no-answer synonyms: a gold span "None" stays a gold."""
    if "answers" in rec and rec["answers"] is not None and not isinstance(rec["answers"], str):
        answers = rec["answers"]  # official: [{"text", "answer_start"}]; hub: {"text": [...], ...}
        texts = answers.get("text", []) if isinstance(answers, Mapping) else [
            a["text"] if isinstance(a, Mapping) else a for a in answers]
        texts = [str(t) for t in texts]
    else:  # seed: one string, "" when unanswerable
        one = text(rec.get("answer", rec.get("answers")))
        texts = [one] if one != "" else []
    return [] if rec.get("is_impossible") is True else texts
