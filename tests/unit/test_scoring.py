"""Scoring checked against references: scikit-learn (macro-F1, F1, MCC, balanced accuracy) on many
random vectors, the official SQuAD v2 evaluation formulas on multi-gold and unanswerable items,
and one parity test per quirk of the study's scorer (``study.py``), plus the study's own numbers."""
from __future__ import annotations

import collections
import json
import random
import re
import statistics
import string
import warnings

import numpy as np
import pytest
from sklearn.metrics import (balanced_accuracy_score, f1_score, matthews_corrcoef,
                             precision_recall_fscore_support)

from services.common.data import tasks as T
from services.common.data.task_types import boolq, mcq4, squad_v2
from services.evaluator import stats as S
from services.evaluator import study
from services.evaluator.score import score_items
from tests.conftest import SHARED

NONE = "<none>"  # a format failure, for scikit-learn: a label outside the task's label set
ROUNDED = 5.01e-5  # the scorers round to 4 decimals, as the study


# ---------------------------------------------------------------------------------------------
# scikit-learn

def _random_mcq(rng: random.Random, labels: list[str]) -> tuple[list, list]:
    n = rng.randint(1, 40)
    gold_pool = rng.sample(labels, rng.randint(1, len(labels)))  # some classes absent from the golds
    pred_pool = rng.sample(labels, rng.randint(1, len(labels))) + [None, None, "Z"]
    return [rng.choice(pred_pool) for _ in range(n)], [rng.choice(gold_pool) for _ in range(n)]


@pytest.mark.parametrize("labels", [("A", "B", "C", "D"), ("A", "B", "C", "D", "E")])
def test_mcq_macro_f1_and_per_class_equal_sklearn_on_random_vectors(labels):
    rng = random.Random(len(labels))
    for _ in range(300):
        preds, golds = _random_mcq(rng, list(labels))
        got = mcq4.score_mcq4(preds, golds, labels)
        y_pred = [NONE if p is None else p for p in preds]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = f1_score(golds, y_pred, labels=list(labels), average="macro", zero_division=0)
            p, r, f, _ = precision_recall_fscore_support(golds, y_pred, labels=list(labels), zero_division=0)
        assert got["macro_f1"] == pytest.approx(want, abs=ROUNDED), (preds, golds)
        for i, c in enumerate(labels):
            assert got["per_class"][c] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i]}, abs=ROUNDED)
        # the bootstrap's point estimate is the same definition
        cols = S.item_columns("mcq4", preds, golds, labels)
        point = S.resampled_metrics("mcq4", cols, np.arange(len(preds))[None, :])["macro_f1"][0]
        assert point == pytest.approx(want, abs=1e-9)


def test_yes_no_metrics_equal_sklearn_on_random_vectors():
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 30)
        golds = [rng.choice(rng.choice([["True"], ["False"], ["True", "False"]])) for _ in range(n)]
        golds = golds if rng.random() < 0.8 else [golds[0]] * n  # one class only, sometimes
        preds = [rng.choice(["True", "False", None]) for _ in range(n)]
        got = boolq.score_boolq(preds, golds)
        y_true = [g == "True" for g in golds]
        y_pred = [(p == "True") if p is not None else not t for p, t in zip(preds, y_true)]  # a miss
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = {"f1_pos": f1_score(y_true, y_pred, pos_label=True, zero_division=0),
                    "macro_f1": f1_score(y_true, y_pred, labels=[True, False], average="macro", zero_division=0),
                    "balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
                    "MCC": matthews_corrcoef(y_true, y_pred)}
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=ROUNDED), (k, preds, golds)
        assert got["accuracy"] == pytest.approx(100 * np.mean([p == g for p, g in zip(preds, golds)]), abs=0.005)
        cols = S.item_columns("boolq", preds, golds)
        point = S.resampled_metrics("boolq", cols, np.arange(n)[None, :])
        for k in ("f1_pos", "balanced_accuracy", "MCC"):
            assert point[k][0] == pytest.approx(want[k], abs=1e-9), k


# ---------------------------------------------------------------------------------------------
# The official SQuAD v2 evaluation (evaluate-v2.0.py), written out as a reference

def _off_normalize(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", s)
    return " ".join(s.split())


def _off_tokens(s):
    return _off_normalize(s).split() if s else []


def _off_exact(gold, pred):
    return int(_off_normalize(gold) == _off_normalize(pred))


def _off_f1(gold, pred):
    g, p = _off_tokens(gold), _off_tokens(pred)
    common = collections.Counter(g) & collections.Counter(p)
    same = sum(common.values())
    if len(g) == 0 or len(p) == 0:
        return int(g == p)
    if same == 0:
        return 0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def _official(golds: list[list[str]], preds: list[str]) -> dict:
    exact, f1, has = [], [], []
    for answers, pred in zip(golds, preds):
        usable = [a for a in answers if _off_normalize(a)] or [""]
        exact.append(max(_off_exact(a, pred) for a in usable))
        f1.append(max(_off_f1(a, pred) for a in usable))
        has.append(bool(answers))
    sub = lambda xs, keep: 100 * sum(x for x, k in zip(xs, has) if k == keep) / max(1, sum(h == keep for h in has))  # noqa: E731
    return {"EM": 100 * sum(exact) / len(preds), "F1": 100 * sum(f1) / len(preds),
            "HasAns_EM": sub(exact, True), "HasAns_F1": sub(f1, True), "NoAns_Accuracy": sub(exact, False)}


WORDS = ["Denver", "Broncos", "the", "a", "Panthers", "1889", "Eiffel", "tower", "None", "unknown", "n/a",
         "Paris,", "Tower.", "An", "x"]


def test_squad_v2_equals_the_official_formulas_on_random_multi_gold_items():
    rng = random.Random(3)
    for _ in range(200):
        golds, preds = [], []
        for _ in range(rng.randint(2, 12)):
            answers = [" ".join(rng.choices(WORDS, k=rng.randint(1, 4))) for _ in range(rng.choice([0, 0, 1, 2, 3]))]
            pool = answers + ["", " ".join(rng.choices(WORDS, k=rng.randint(1, 3)))]
            golds.append(answers)
            preds.append(rng.choice(pool))
        if not any(golds) or all(golds):
            golds[0], golds[-1] = [], ["Broncos"]  # both subsets present
        got, want = squad_v2.score_squad_v2(preds, golds), _official(golds, preds)
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=0.005), (k, golds, preds)


def test_squad_issue_example_best_of_all_golds():
    golds = [["Denver Broncos", "the Denver Broncos", "Broncos"]]
    r = squad_v2.score_squad_v2(["Broncos"], golds)
    assert (r["EM"], r["F1"]) == (100.0, 100.0)
    assert _official(golds, ["Broncos"])["EM"] == 100
    # the first gold alone (what a one-gold import kept) gives EM 0 / F1 66.67
    assert (squad_v2.score_squad_v2(["Broncos"], [["Denver Broncos"]])["F1"]) == 66.67


def test_squad_unanswerable_items_and_format_failures():
    r = squad_v2.score_squad_v2(["", "Paris", None, ""], [[], [], [], ["The"]])
    # "" abstains on unanswerable; an answer there is wrong; no \boxed{} is wrong even there;
    # a gold that normalises to "" ("The") is dropped, so the item is scored against [""] but is HasAns
    assert r["NoAns_Accuracy"] == pytest.approx(100 / 3, abs=0.01) and r["HasAns_EM"] == 100.0
    assert r["EM"] == 50.0 and r["AvNA_Accuracy"] == 25.0 and r["format_success_rate"] == 75.0


def test_gold_answers_are_never_remapped_and_old_datasets_fall_back():
    row = {"answer": "None", "answers": np.array(["None", "none of them"])}
    assert T.gold_answers("squad", row) == ["None", "none of them"]
    assert T.gold_answer("squad", row) == "None" and T.format_target("squad", row) == "\\boxed{None}"
    assert T.format_target("squad", {"answer": "", "answers": []}) == "\\boxed{unanswerable}"
    # an older dataset without `answers`
    assert T.gold_answers("squad", {"answer": "unknown"}) == ["unknown"]
    assert T.gold_answers("squad", {"answer": ""}) == []
    # only predictions are mapped: \boxed{None} abstains, so it misses an answerable gold "None"
    assert T.parse_answer("squad", "\\boxed{None}") == ""
    r = squad_v2.score_squad_v2([""], [T.gold_answers("squad", row)])
    assert r["HasAns_EM"] == 0.0 and r["NoAns_Accuracy"] is None
    import pandas as pd
    df = T.with_answers("squad", pd.DataFrame({"answer": ["Paris", ""]}))
    assert list(df.answers) == [["Paris"], []]


# ---------------------------------------------------------------------------------------------
# The study's scorer: one parity test per quirk

def _study(task, outputs, golds):
    return score_items(task, outputs, golds, "study")


def _ftlab(task, outputs, golds):
    return score_items(task, outputs, golds, "ftlab")


def test_study_reads_the_first_box_up_to_the_first_brace():
    outs = ["\\boxed{A} no, \\boxed{B}", "\\boxed{\\frac{1}{2}}"]
    assert study.first_boxed(outs[0]) == "A" and study.first_boxed(outs[1]) == "\\frac{1"
    assert [i["parsed"] for i in _study("arc", outs[:1], ["B"])["items"]] == ["A"]
    assert [i["parsed"] for i in _ftlab("arc", outs[:1], ["B"])["items"]] == ["B"]
    assert _study("openmath", outs[1:], ["0.5"])["accuracy"] == 0.0
    assert _ftlab("openmath", outs[1:], ["0.5"])["accuracy"] == 100.0


def test_study_arc_letters_upper_cased_first_a_to_d_character_digits_nothing():
    outs = ["\\boxed{c}", "\\boxed{Option C}", "\\boxed{the answer is C}", "\\boxed{3}"]
    assert [i["parsed"] for i in _study("arc", outs, ["C"] * 4)["items"]] == ["C", "C", "A", None]
    assert [i["parsed"] for i in _ftlab("arc", outs, ["C"] * 4)["items"]] == ["C", "C", None, "C"]
    assert study.gold_value("mcq4", "3") is None  # a digit gold is never matched by the study


def test_study_macro_f1_counts_only_pairs_where_both_are_a_to_d():
    golds, outs = ["A", "A", "B", "C"], ["\\boxed{A}", "nothing", "\\boxed{B}", "\\boxed{7}"]
    s = _study("arc", outs, golds)
    # study: pairs (A,A), (B,B) only -> F1 A 1, B 1, C 0, D 0
    assert s["metrics"]["macro_f1"] == 0.5 and s["metrics"]["confusion_matrix"]["A"]["A"] == 1
    keep = [(g, p) for g, p in zip(golds, ["A", None, "B", None]) if p is not None]
    assert s["metrics"]["macro_f1"] == pytest.approx(
        f1_score(*zip(*keep), labels=list("ABCD"), average="macro", zero_division=0))
    # ftlab, ARC's YAML labels A-D: the format failures are misses of A and C
    f = _ftlab("arc", outs, golds)
    want = f1_score(golds, ["A", NONE, "B", NONE], labels=list("ABCD"), average="macro", zero_division=0)
    assert f["metrics"]["macro_f1"] == pytest.approx(want, abs=ROUNDED)


def test_study_squad_unboxed_is_an_abstention():
    s = _study("squad", ["I cannot tell"], [""])
    f = _ftlab("squad", ["I cannot tell"], [""])
    assert s["metrics"]["EM"] == s["metrics"]["NoAns_Accuracy"] == 100.0 and s["format_success_rate"] == 0.0
    assert f["metrics"]["EM"] == f["metrics"]["NoAns_Accuracy"] == 0.0
    assert s["items"][0] == {"id": "0", "parsed": None, "correct": True}


def test_study_squad_answerable_decided_by_the_empty_like_set():
    outs = ["\\boxed{unanswerable}", "\\boxed{unanswerable}", "\\boxed{unanswerable}"]
    golds = [["None"], ["n/a"], []]
    s = _study("squad", outs, golds)["metrics"]
    # "None" gold: unanswerable to the study; "n/a" normalises to "na", not in its set: answerable
    assert s["NoAns_Accuracy"] == 100.0 and s["HasAns_EM"] == 0.0 and s["AvNA_Accuracy"] == pytest.approx(66.67)
    assert s["EM"] == 0.0  # "unanswerable" != "" for its EM, even on the unanswerable items
    f = _ftlab("squad", outs, golds)["metrics"]
    assert f["NoAns_Accuracy"] == 100.0 and f["HasAns_EM"] == 0.0 and f["EM"] == pytest.approx(33.33)
    # the study scores the first gold only
    assert _study("squad", ["\\boxed{Broncos}"], [["Denver Broncos", "Broncos"]])["metrics"]["EM"] == 0.0


def test_study_openmath_plain_float_strict_tolerance_and_parsed_only_average():
    outs = ["\\boxed{1,234}", "\\boxed{0.0001}", "\\boxed{3}", "no box", "\\boxed{x}"]
    golds = ["1234", "0", "1", "2", "5"]
    s = _study("openmath", outs, golds)
    assert [i["correct"] for i in s["items"]] == [False, False, False, False, False]  # |d| = 1e-4 is not < 1e-4
    assert s["metrics"]["avg_abs_diff"] == pytest.approx((0.0001 + 2) / 2)  # only "0.0001" and "3" converted
    f = _ftlab("openmath", outs, golds)
    assert [i["correct"] for i in f["items"]] == [True, True, False, False, False]
    # nothing converts: no crash, no average
    assert _study("openmath", ["\\boxed{x}", "\\boxed{y}"], ["1", "2"])["metrics"]["avg_abs_diff"] is None


def test_study_boolq_answers_and_missing_answers():
    outs = ["\\boxed{t}", "\\boxed{No}", "\\boxed{maybe}", "\\boxed{1}"]
    s = _study("boolq", outs, [True, False, False, "true"])
    assert [i["parsed"] for i in s["items"]] == [True, False, None, True]
    assert s["metrics"]["confusion_matrix"] == {"TP": 2, "TN": 1, "FP": 1, "FN": 0}  # "maybe" on False: FP
    f = _ftlab("boolq", outs, [True, False, False, "true"])
    assert [i["parsed"] for i in f["items"]] == [None, "False", None, None]
    # balanced accuracy with one gold class: the study averages in a 0 recall, sklearn does not
    assert _study("boolq", ["\\boxed{True}"] * 2, [True, True])["metrics"]["balanced_accuracy"] == 0.5
    assert _ftlab("boolq", ["\\boxed{True}"] * 2, [True, True])["metrics"]["balanced_accuracy"] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert balanced_accuracy_score([True, True], [True, True]) == 1.0


def test_study_latency_and_token_statistics():
    lat = [0.12341, 0.12344, 0.9, 0.9004]
    got = study.latency_stats(lat)
    assert got["std"] == round(statistics.stdev(lat), 4) != round(float(np.std(lat)), 4)  # sample std
    assert got["mode"] == 0.123  # rounded to 3 decimals first; the first of tied modes
    assert study.token_stats([5, 7, 7, 9])["std"] == round(statistics.stdev([5, 7, 7, 9]), 2)
    assert study.latency_stats([])["mode"] is None and study.latency_stats([0.5])["std"] == 0.0


def test_study_statistics_reproduce_the_studys_own_metrics_file():
    path = SHARED / "seed" / "example_metrics_Qwen3-8B-openmath_SFT_LoRa256_QLORA_w4_headbf16.json"
    if not path.is_file():
        pytest.skip(f"needs {path}")
    data = json.loads(path.read_text())
    for block in data["datasets"].values():
        tok, lat = block["tokens_generated"], block["latency_seconds"]
        assert study.token_stats(tok["per_prompt"]) == tok  # integers: exact
        got = study.latency_stats(lat["per_prompt"])
        # per_prompt was stored rounded to 4 decimals, so sums and the rounded mode can move slightly
        assert got["median"] == lat["median"] and got["std"] == lat["std"]
        assert got["sum"] == pytest.approx(lat["sum"], abs=1e-3) and got["mean"] == pytest.approx(lat["mean"], abs=2e-4)
        assert lat["mode"] in statistics.multimode([round(x, 3) for x in lat["per_prompt"]])


def test_study_metrics_block_has_the_studys_keys():
    for task, outs, golds in (("arc", ["\\boxed{A}"], ["A"]), ("squad", ["\\boxed{x}"], ["x"]),
                              ("openmath", ["\\boxed{1}"], ["1"]), ("boolq", ["\\boxed{True}"], [True])):
        s = _study(task, outs, golds)
        assert {"type", "total_samples", "format_success_rate", "correct", "incorrect", "accuracy", "metrics"} <= set(s)
        assert s["correct"] == 1 and s["accuracy"] == 100.0
        assert s["metrics"]["task"] == T.get_task(task).title and s["metrics"]["support"] == 1
