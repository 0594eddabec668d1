"""Bootstrap CIs, paired comparison and McNemar against the scorers and hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from services.common.data.task_types import get_type, math_numeric, mcq4, squad_v2
from services.evaluator import stats as S

CASES = {
    "mcq4": (["A", "B", "B", "C", "D", None, "A", "C"], ["A", "A", "B", "C", "D", "D", "B", "C"], mcq4.score_mcq4),
    "squad_v2": (["paris", "", "Eiffel Tower in Paris", None, None, "x"], ["Paris", "", "the Eiffel Tower", "", "1889", ""],
                 squad_v2.score_squad_v2),
    "math_numeric": (["5", "0.75005", "1", None, "7"], ["5", "0.75", "-2", "100", "9"], math_numeric.score_numeric),
}


@pytest.mark.parametrize("task_type", list(CASES))
def test_headline_on_all_items_equals_the_scorer(task_type):
    preds, golds, scorer = CASES[task_type]
    want = scorer(preds, golds)
    cols = S.item_columns(task_type, preds, golds)
    got = S.resampled_metrics(task_type, cols, np.arange(len(preds))[None, :])
    for m in get_type(task_type).ci_metrics:
        w, g = want[m], float(got[m][0])
        assert (w is None and math.isnan(g)) or g == pytest.approx(w, abs=0.006), m


@pytest.mark.parametrize("task_type", list(CASES))
def test_ci_is_seeded_reproducible_and_brackets_the_estimate(task_type):
    preds, golds, scorer = CASES[task_type]
    a = S.bootstrap_ci(task_type, preds, golds, 500, seed=1)
    assert a == S.bootstrap_ci(task_type, preds, golds, 500, seed=1)
    assert a != S.bootstrap_ci(task_type, preds, golds, 500, seed=2)
    want = scorer(preds, golds)
    for m, ci in a.items():
        assert ci[0] <= ci[1]
        if m in ("accuracy", "format_success_rate", "EM", "F1"):
            assert ci[0] <= want[m] <= ci[1], m


def test_constant_outcomes_give_a_zero_width_ci():
    ci = S.bootstrap_ci("mcq4", ["A"] * 10, ["A"] * 10, 200)
    # macro-F1 averages the task's four labels: A has F1 1, B-D (absent) 0
    assert ci["accuracy"] == [100.0, 100.0] and ci["macro_f1"] == [0.25, 0.25]
    assert S.bootstrap_ci("math_numeric", [None] * 4, ["1"] * 4, 200)["avg_abs_diff"] is None


def test_mcnemar_exact_by_hand():
    a = np.array([True] * 10 + [False] * 2 + [True] * 5)
    b = np.array([False] * 10 + [True] * 2 + [True] * 5)
    # 10 vs 2 discordant: p = 2 * P(X <= 2), X ~ Bin(12, 0.5) = 2 * (1 + 12 + 66) / 4096
    assert S.mcnemar_p(a, b) == pytest.approx(2 * 79 / 4096)
    assert S.mcnemar_p(a, a) == 1.0
    assert S.mcnemar_p(np.array([True]), np.array([False])) == 1.0  # one discordant pair proves nothing


def test_paired_difference_ci_and_mcnemar():
    golds = ["A", "B", "C", "D"] * 10
    a = ["A"] * 40                      # right on 10
    b = list(golds[:30]) + ["A"] * 10   # right on 30 + 2 (the last block's "A" golds)
    r = S.paired("mcq4", a, b, golds, 1000, seed=0)
    acc = r["accuracy"]
    assert acc["a"] == 25.0 and acc["b"] == 80.0 and acc["diff"] == 55.0
    assert 0 < acc["ci95"][0] < 55.0 < acc["ci95"][1]
    assert acc["a_only"] == 0 and acc["b_only"] == 22 and acc["mcnemar_p"] < 1e-5
    assert "mcnemar_p" not in r["macro_f1"] and r["macro_f1"]["diff"] > 0
