"""Seed-aware intervals (services/evaluator/stats.py) against independent implementations: scipy's
percentile bootstrap for the one-level case, and the exact distribution of the two-level bootstrap
(every seed draw x every item draw, enumerated) for the two-level one."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from services.evaluator import stats

GOLD = "A"


def preds_of(correct: np.ndarray) -> list[str]:
    return [GOLD if c else "B" for c in correct]


def test_one_level_matches_scipy_bootstrap():
    rng = np.random.default_rng(1)
    correct = rng.random(300) < 0.6
    ours = stats.bootstrap_ci("mcq4", preds_of(correct), [GOLD] * 300, n_resamples=20000, seed=3)["accuracy"]
    ref = sps.bootstrap((100.0 * correct,), np.mean, n_resamples=20000, method="percentile", random_state=4)
    assert ours == pytest.approx([ref.confidence_interval.low, ref.confidence_interval.high], abs=0.8)
    one = stats.replicated_ci("mcq4", [preds_of(correct)], [GOLD] * 300, n_resamples=20000, seed=5)["accuracy"]
    assert one["n_seeds"] == 1 and one["sd_seeds"] is None  # one seed: the items' interval alone
    assert one["ci95"] == pytest.approx(ours, abs=0.8)


def _exact_two_level(x: np.ndarray) -> np.ndarray:
    """Every equally likely outcome of the two-level bootstrap of mean accuracy (seeds drawn with
    replacement, then one item draw shared by the drawn seeds): S^S x n^n statistics."""
    s, n = x.shape
    out = []
    for seeds in itertools.product(range(s), repeat=s):
        for items in itertools.product(range(n), repeat=n):
            out.append(100.0 * x[np.ix_(seeds, items)].mean())
    return np.array(out)


def test_two_level_matches_its_exact_distribution():
    x = np.array([[1, 1, 0, 1, 0], [0, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=bool)  # 3 seeds x 5 items
    exact = _exact_two_level(x)  # 27 x 3125 outcomes
    golds = [GOLD] * x.shape[1]
    got = stats.replicated_ci("mcq4", [preds_of(row) for row in x], golds, n_resamples=40000, seed=7)["accuracy"]
    assert got["mean"] == pytest.approx(100.0 * x.mean(), abs=1e-3)
    assert got["sd_seeds"] == pytest.approx(float(np.std(100.0 * x.mean(1), ddof=1)), abs=1e-3)
    lo, hi = np.percentile(exact, [2.5, 97.5])
    assert got["ci95"] == pytest.approx([lo, hi], abs=2.5)  # a discrete distribution: steps of 100/15
    # the spread is the two levels' together: wider than the items' alone, wider than the seeds' alone
    weights, idx = stats._two_level(3, 5, 40000, 7)
    boot = (weights * (100.0 * x[:, idx].mean(2)).T).sum(1)  # the same estimator written out directly
    assert np.std(boot) == pytest.approx(np.std(exact), rel=0.03)
    items_only = [100.0 * x[:, list(i)].mean() for i in itertools.product(range(5), repeat=5)]
    seeds_only = [100.0 * x[list(s)].mean() for s in itertools.product(range(3), repeat=3)]
    assert np.std(exact) > max(np.std(items_only), np.std(seeds_only))


def test_paired_difference_pairs_seeds_and_items_and_says_seed_noise():
    rng = np.random.default_rng(0)
    n = 400
    base = rng.random(n) < 0.5
    golds = [GOLD] * n
    # the child's per-seed effect flips sign from seed to seed: within seed noise
    noisy = [base ^ (rng.random(n) < p) for p in (0.05, 0.3, 0.05, 0.3)]
    shifts = [100.0 * (c.mean() - base.mean()) for c in noisy]
    r = stats.replicated_paired("mcq4", [preds_of(base)], [preds_of(c) for c in noisy], golds, 4000, 1)["accuracy"]
    assert r["n_seeds"] == 4 and r["mean"] == pytest.approx(np.mean(shifts), abs=1e-3)
    assert r["sd_seeds"] == pytest.approx(np.std(shifts, ddof=1), abs=1e-3)
    # a clear gain in every seed: the interval excludes 0, not seed noise
    better = [base | (rng.random(n) < 0.4) for _ in range(3)]
    c = stats.replicated_paired("mcq4", [preds_of(base)], [preds_of(b) for b in better], golds, 4000, 1)["accuracy"]
    assert c["ci95"][0] > 0 and not c["within_seed_noise"]
    # seeds paired: the same per-seed offsets on both sides cancel exactly
    same = stats.replicated_paired("mcq4", [preds_of(b) for b in better], [preds_of(b) for b in better], golds, 500, 1)
    assert same["accuracy"]["mean"] == 0 and same["accuracy"]["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="seeds do not pair"):
        stats.replicated_paired("mcq4", [preds_of(base)] * 2, [preds_of(b) for b in better], golds)


def test_within_seed_noise_when_seeds_disagree():
    n = 200
    golds = [GOLD] * n
    a = np.zeros(n, bool)
    a[:100] = True
    up, down = a.copy(), a.copy()
    up[100:120] = True     # +10 points
    down[:20] = False      # -10 points
    r = stats.replicated_paired("mcq4", [preds_of(a)], [preds_of(up), preds_of(down), preds_of(up)], golds, 4000, 2)
    acc = r["accuracy"]
    assert acc["mean"] == pytest.approx(10 / 3, abs=1e-3) and acc["ci95"][0] < 0 < acc["ci95"][1]
    assert acc["within_seed_noise"]
