"""Task metrics against hand-computed numbers and the study's own example file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common.data import tasks as T
from services.common.data.task_types import get_type, math_numeric, mcq4, squad_v2

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
EXAMPLE = next(iter(sorted((SHARED / "seed").glob("example_metrics_*.json"))), None) if SHARED.is_dir() else None


# --- multiple choice ----------------------------------------------------------------------------------

def test_mcq_six_items_by_hand():
    golds = ["A", "A", "B", "C", "D", "D"]
    preds = ["A", "B", "B", "C", "D", None]  # one wrong letter, one format failure
    r = mcq4.score_mcq4(preds, golds)
    # A: P 1/1 R 1/2 F1 2/3 | B: P 1/2 R 1/1 F1 2/3 | C: 1 1 1 | D: P 1/1 R 1/2 F1 2/3
    # macro-F1 = (2/3 + 2/3 + 1 + 2/3) / 4 = 0.75
    assert r["macro_f1"] == 0.75
    assert r["accuracy"] == 66.67 and r["format_success_rate"] == 83.33 and r["support"] == 6
    assert r["correct"] == [True, False, True, True, True, False]
    assert r["per_class"]["A"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667}
    assert r["per_class"]["B"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667}
    assert r["per_class"]["C"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert r["per_class"]["D"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667}
    assert r["confusion_matrix"]["A"] == {"A": 1, "B": 1, "C": 0, "D": 0}
    assert r["confusion_matrix"]["D"] == {"A": 0, "B": 0, "C": 0, "D": 1}  # the None is in no column


def test_mcq_from_parsed_text_with_numeric_labels():
    texts = ["\\boxed{2}", "\\boxed{(b)}", "B", "\\boxed{D) lots}"]
    preds = [T.parse_answer("arc", t) for t in texts]
    golds = [T.gold_answer("arc", {"answer": a}) for a in ("B", "2", "B", "4")]
    r = mcq4.score_mcq4(preds, golds)
    assert preds == ["B", "B", None, "D"] and golds == ["B", "B", "B", "D"]
    assert r["accuracy"] == 75.0 and r["format_success_rate"] == 75.0
    # B: P 2/2 R 2/3 F1 0.8 | D: 1 1 1 | A, C absent from golds and predictions: F1 0, still averaged
    assert r["macro_f1"] == 0.45
    assert r["per_class"]["A"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_mcq_reproduces_the_study_example_confusion_matrix():
    # seed/example_metrics_Qwen3-8B-openmath_SFT_LoRa256_QLORA_w4_headbf16.json, ARC block
    cm = {"A": {"A": 13, "B": 0, "C": 0, "D": 2}, "B": {"A": 0, "B": 12, "C": 0, "D": 2},
          "C": {"A": 0, "B": 1, "C": 8, "D": 1}, "D": {"A": 0, "B": 0, "C": 0, "D": 11}}
    golds, preds = [], []
    for g, row in cm.items():
        for p, n in row.items():
            golds += [g] * n
            preds += [p] * n
    r = mcq4.score_mcq4(preds, golds)
    assert r["accuracy"] == 88.0 and r["macro_f1"] == 0.8803 and r["support"] == 50
    assert r["confusion_matrix"] == cm
    assert r["per_class"]["A"] == {"precision": 1.0, "recall": 0.8667, "f1": 0.9286}
    assert r["per_class"]["D"] == {"precision": 0.6875, "recall": 1.0, "f1": 0.8148}


# --- SQuAD v2 ----------------------------------------------------------------------------------------

def test_squad_normalisation():
    assert squad_v2.normalize_squad("The  Cat, a dog.") == "cat dog"
    assert squad_v2.normalize_squad("An apple!") == "apple"
    assert squad_v2.normalize_squad("theatre") == "theatre"  # articles only as whole words
    assert squad_v2.squad_f1("", "") == 1.0 and squad_v2.squad_f1("x", "") == 0.0 and squad_v2.squad_f1("", "x") == 0.0


def test_squad_five_items_by_hand():
    golds = ["Paris", "", "the Eiffel Tower", "", "1889"]
    preds = ["paris", "", "Eiffel Tower in Paris", None, None]
    r = squad_v2.score_squad_v2(preds, golds)
    # EM 1,1,0,0,0 | F1 1, 1, 2/3 (P 2/4, R 2/2), 0, 0 | answerable items 1,3,5; unanswerable 2,4
    assert r["EM"] == 40.0 and r["accuracy"] == 40.0
    assert r["F1"] == 53.33          # (1 + 1 + 2/3) / 5
    assert r["HasAns_EM"] == 33.33   # 1/3
    assert r["HasAns_F1"] == 55.56   # (1 + 2/3 + 0) / 3
    assert r["NoAns_Accuracy"] == 50.0  # the None on an unanswerable question is not an abstention
    assert r["AvNA_Accuracy"] == 60.0   # items 1-3 right, the two None wrong
    assert r["format_success_rate"] == 60.0 and r["support"] == 5
    assert r["correct"] == [True, True, False, False, False]


def test_squad_empty_subsets_are_none():
    r = squad_v2.score_squad_v2(["x"], ["x"])
    assert r["NoAns_Accuracy"] is None and r["HasAns_EM"] == 100.0


def test_squad_parsed_unanswerable_matches_empty_gold():
    pred = T.parse_answer("squad", "\\boxed{unanswerable}")
    gold = T.gold_answer("squad", {"answer": ""})
    assert squad_v2.score_squad_v2([pred], [gold])["EM"] == 100.0


# --- numeric -----------------------------------------------------------------------------------------

def test_numeric_by_hand():
    golds = ["5", "0.75", "-2", "100"]
    preds = ["5", "0.75005", "1", None]
    r = math_numeric.score_numeric(preds, golds)
    assert r["correct"] == [True, True, False, False] and r["accuracy"] == 50.0
    assert r["parsed"] == 3 and r["format_success_rate"] == 75.0 and r["support"] == 4
    assert r["avg_abs_diff"] == 1.000017  # (0 + 0.00005 + 3) / 3, over parsed answers only
    assert r["median_abs_diff"] == 0.00005


def test_numeric_fraction_answer_and_nothing_parsed():
    pred = T.parse_answer("openmath", "\\boxed{\\frac{3}{4}}")
    assert math_numeric.score_numeric([pred], [T.gold_answer("openmath", {"answer": 0.75})])["accuracy"] == 100.0
    r = math_numeric.score_numeric([None, None], ["1", "2"])
    assert r["avg_abs_diff"] is None and r["accuracy"] == 0.0 and r["format_success_rate"] == 0.0


def test_length_mismatch_is_an_error():
    for scorer in (mcq4.score_mcq4, squad_v2.score_squad_v2, math_numeric.score_numeric):
        with pytest.raises(ValueError):
            scorer(["A"], [])


@pytest.mark.skipif(EXAMPLE is None, reason="../shared not available")
def test_metric_keys_match_the_study_json():
    example = json.loads(EXAMPLE.read_text())
    samples = {"mcq4": (mcq4.score_mcq4, ["A"], ["A"]), "squad_v2": (squad_v2.score_squad_v2, ["x"], ["x"]),
               "math_numeric": (math_numeric.score_numeric, ["1"], ["1"])}
    for block in example["datasets"].values():
        scorer, preds, golds = samples[block["type"]]
        result = scorer(preds, golds)
        wanted = set(block["metrics"]) - {"task"}
        assert wanted <= set(result), (block["type"], wanted - set(result))
        assert wanted <= set(get_type(block["type"]).block_keys)
        assert {"accuracy", "format_success_rate", "correct"} <= set(result)
