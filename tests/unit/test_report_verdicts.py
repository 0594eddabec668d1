"""The verdict table (flows/report_verdicts.py): the rule (interval vs margin), which models each
study question compares, the PTQ margin from the fine-tune's gain, missing models said plainly."""
from __future__ import annotations

import pandas as pd
import pytest

from flows import report_verdicts as V

M = "squad_v2__F1"


def table():
    rows = [("base", "base", None, None, "", 7.0, 1.0),
            ("lora8", "lora", 8, None, "base", 20.0, 2.0), ("lora64", "lora", 64, None, "base", 24.0, 2.1),
            ("dora8", "dora", 8, None, "base", 21.0, 2.3), ("vera256", "vera", 256, None, "base", 12.0, 1.5),
            ("full", "full", None, None, "base", 30.0, 3.9),
            ("full_int8", "full", None, "bnb_int8", "full", 29.0, None),
            ("full_gptq", "full", None, "gptq", "full", 10.0, None)]
    return pd.DataFrame(rows, columns=["model", "method", "rank", "ptq_method", "parent_model", M, "train_peak_rss_gb"])


INTERVALS = {("lora64", "full"): (6.0, 1.0, 11.0), ("vera256", "lora64"): (12.0, -1.0, 25.0),
             ("full", "full_int8"): (-1.0, -4.0, 2.0), ("full", "full_gptq"): (-20.0, -26.0, -14.0)}


@pytest.mark.parametrize("lo,hi,expect,margin,want", [
    (1, 3, +1, 0, V.SUPPORTED), (-3, -1, +1, 0, V.CONTRADICTED), (-1, 2, +1, 0, V.UNDECIDED),
    (-20, -14, -1, -11.5, V.SUPPORTED), (-4, 2, -1, -11.5, V.CONTRADICTED), (-14, -9, -1, -11.5, V.UNDECIDED)])
def test_the_rule(lo, hi, expect, margin, want):
    assert V.verdict(lo, hi, expect, margin) == want


def test_each_question_compares_the_right_models():
    asked = []

    def pair(a, b):
        asked.append((a, b))
        return INTERVALS.get((a, b))
    rows = V.lines(["full_vs_lora", "adapters", "ptq"], table(), M, pair)
    assert asked == list(INTERVALS)  # the strongest LoRA rank; best of LoRA/DoRA vs VeRA; each PTQ vs its source
    by = [(r.question, r.verdict) for r in rows]
    assert by == [("full_vs_lora", V.SUPPORTED), ("adapters", V.UNDECIDED),
                  ("ptq", V.CONTRADICTED), ("ptq", V.SUPPORTED)]
    assert rows[2].margin == -11.5  # half of the fine-tune's gain over the base (30 - 7)
    assert "2.10 GB (lora) vs 1.50 GB (vera)" in rows[1].note
    md = "\n".join(V.markdown(rows))
    assert md.count("\n| ") == 5 and "[+1, +11]" in md and "**contradicted**" in md


def test_missing_models_are_not_decidable_and_unknown_questions_refused():
    t = table()
    rows = V.lines(["full_vs_lora", "ptq"], t[t.method != "full"], M, lambda a, b: None)
    assert [r.verdict for r in rows] == [V.UNDECIDED, V.UNDECIDED]
    assert rows[0].note.startswith("not in this run")
    p: list[str] = []
    assert V.parse(["ptq", "speed"], p) == ["ptq"] and "unknown question 'speed'" in p[0]


def test_a_report_with_verdicts_leads_with_them(store, tmp_path):
    """The wiring: an experiment's ``verdicts:`` puts the table first in report.md and report.html;
    the study's stored models have no per-item predictions, so nothing is paired: not decidable."""
    from flows.report import RunInfo, build_report
    from tests.unit.test_aggregate import seed_study
    evals = seed_study(store, tmp_path)
    steps = [{"key": f"evaluate:{m}/{e}", "stage": "evaluate", "output": f"{m}/{e}", "status": "skipped"}
             for m, e in evals]
    spec = {"verdicts": ["full_vs_lora", "adapters", "ptq"], "evaluate": {"tasks": [{"task": "OpenMathInstruct-2"}]}}
    build_report(store, RunInfo("p", "r1", spec=spec), steps, tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.index("## The study's findings, tested") < md.index("## Summary")
    rows = [x for x in md.splitlines() if x.startswith(("| full_vs_lora", "| adapters", "| ptq"))]
    assert len(rows) >= 3 and all(V.UNDECIDED in r for r in rows)
    assert "no paired evaluation" in md
    assert "<h2>The study&#x27;s findings, tested</h2>" in (tmp_path / "rep" / "report.html").read_text()
    build_report(store, RunInfo("p", "r2"), steps, tmp_path / "rep2")  # no verdicts: no section
    assert "findings, tested" not in (tmp_path / "rep2" / "report.md").read_text()


# ----------------------------------------------------------------------------- seeds (issue 25)

def _seeded_pair(store, tmp_path, lora_right, full_right):
    """Base B, a LoRA and a full fine-tune of it with three seeds each (``*_right``: how many of the
    40 items seed 1, 2, 3 gets right); the summary's rows are the configurations."""
    from tests.unit.test_seed_report import _evaluation, _model, _right
    _model(store, tmp_path, "B", {"kind": "base"})
    _evaluation(store, tmp_path, "B", _right(10))
    evals = [("B", "e1")]
    for method, tag, rights in (("lora", "LoRa8", lora_right), ("full", "Full", full_right)):
        for s, k in enumerate(rights, 1):
            name = f"B-arc_SFT_{tag}_s{s}_NoQuant"
            _model(store, tmp_path, name, {"kind": "trained", "base_model": "B", "parents": ["B"]})
            _evaluation(store, tmp_path, name, _right(k))
            evals.append((name, "e1"))
    table = pd.DataFrame([("B", "base", None, 25.0), ("B-arc_SFT_LoRa8_NoQuant", "lora", 8, 1.0),
                          ("B-arc_SFT_Full_NoQuant", "full", None, 1.0)],
                         columns=["model", "method", "rank", "ai2_arc__accuracy"]).assign(ptq_method=None,
                                                                                          parent_model="B")
    asked = []
    pair = V.compare_pair(store, dict(evals), "ai2_arc", "accuracy", n_resamples=2000)
    return V.lines(["full_vs_lora"], table, "ai2_arc__accuracy", lambda a, b: asked.append((a, b)) or pair(a, b)), asked


def test_a_clear_difference_over_three_seeds_is_supported(store, tmp_path):
    """The summary folds the seeds into one row per configuration; the verdict pairs seed i of the
    full fine-tune with seed i of LoRA on the same items (not 'no paired evaluation')."""
    (row,), asked = _seeded_pair(store, tmp_path, lora_right=(20, 21, 22), full_right=(34, 35, 36))
    assert asked == [("B-arc_SFT_LoRa8_NoQuant", "B-arc_SFT_Full_NoQuant")]
    assert row.verdict == V.SUPPORTED and row.diff == pytest.approx(35.0)  # 14 more items of 40, every seed
    assert 0 < row.ci[0] < 35.0 < row.ci[1]


def test_a_difference_within_seed_noise_is_not_decidable(store, tmp_path):
    """Full FT ahead on average, but one seed of three has LoRA far ahead: the seeds' spread, not
    the items', decides: not decidable (the items alone, seeds held fixed, would call it)."""
    from services.evaluator import stats
    from tests.unit.test_seed_report import _right
    (row,), _ = _seeded_pair(store, tmp_path, lora_right=(20, 30, 20), full_right=(30, 20, 34))
    assert row.verdict == V.UNDECIDED and row.diff == pytest.approx(100 * (10 - 10 + 14) / 3 / 40, abs=1e-3)
    items_only = stats.replicated_paired("mcq4", [_right(k) for k in (20, 30, 20)], [_right(k) for k in (30, 20, 34)],
                                         list("ABCD" * 10), 2000)["accuracy"]["ci95_items"]
    assert items_only[0] > 0  # a one-level (items) interval would have said supported


def test_ptq_of_a_seeded_fine_tune_pairs_each_seed_with_its_source(store, tmp_path):
    """A folded PTQ row's parent is its first seed's model; the question finds the fine-tune's
    configuration and pairs seed i's quantization with seed i's source."""
    from tests.unit.test_seed_report import _evaluation, _model, _right
    _model(store, tmp_path, "B", {"kind": "base"})
    _evaluation(store, tmp_path, "B", _right(10))
    evals = [("B", "e1")]
    for s, (k, int8_lost, gptq_lost) in enumerate(((30, 1, 20), (31, 2, 21), (32, 1, 22)), 1):
        ft = f"B-arc_SFT_Full_s{s}_NoQuant"
        _model(store, tmp_path, ft, {"kind": "trained", "base_model": "B", "parents": ["B"]})
        _evaluation(store, tmp_path, ft, _right(k))
        evals.append((ft, "e1"))
        for tag, lost in (("Int8_BnB", int8_lost), ("W4A16_GPTQ", gptq_lost)):
            _model(store, tmp_path, f"B-arc_SFT_Full_s{s}_{tag}", {"kind": "quantized", "parents": [ft]})
            _evaluation(store, tmp_path, f"B-arc_SFT_Full_s{s}_{tag}", _right(k - lost))
            evals.append((f"B-arc_SFT_Full_s{s}_{tag}", "e1"))
    table = pd.DataFrame([("B", "base", None, None, None, 25.0),
                          ("B-arc_SFT_Full_NoQuant", "full", None, None, "B", 77.5),
                          ("B-arc_SFT_Full_Int8_BnB", "full", None, "bnb_int8", "B-arc_SFT_Full_s1_NoQuant", 74.2),
                          ("B-arc_SFT_Full_W4A16_GPTQ", "full", None, "gptq", "B-arc_SFT_Full_s1_NoQuant", 25.0)],
                         columns=["model", "method", "rank", "ptq_method", "parent_model", "ai2_arc__accuracy"])
    pair = V.compare_pair(store, dict(evals), "ai2_arc", "accuracy", n_resamples=2000)
    rows = V.lines(["ptq"], table, "ai2_arc__accuracy", pair)
    assert [(r.verdict, round(r.diff, 2)) for r in rows] == [(V.CONTRADICTED, round(-100 * 4 / 120, 2)),
                                                             (V.SUPPORTED, -52.5)]
    assert rows[0].margin == pytest.approx(-26.25)  # half of 77.5 - 25


def test_a_verdict_on_models_scored_differently_is_not_decided(store, tmp_path):
    """A clear gap, but the full fine-tune was scored on vLLM bf16 and LoRA on HF fp32: the
    verdict would judge the engine, so it is not decided and says why."""
    from tests.unit.test_seed_report import _evaluation, _model, _right
    _model(store, tmp_path, "B", {"kind": "base"})
    evals = {}
    for name, k, engine, dtype in (("B-arc_SFT_LoRa8_NoQuant", 20, "hf", "float32"),
                                   ("B-arc_SFT_Full_NoQuant", 36, "vllm", "bfloat16")):
        _model(store, tmp_path, name, {"kind": "trained", "base_model": "B", "parents": ["B"]})
        _evaluation(store, tmp_path, name, _right(k), engine=engine, dtype=dtype)
        evals[name] = "e1"
    table = pd.DataFrame([("B-arc_SFT_LoRa8_NoQuant", "lora", 8, 50.0), ("B-arc_SFT_Full_NoQuant", "full", None, 90.0)],
                         columns=["model", "method", "rank", "ai2_arc__accuracy"]).assign(ptq_method=None,
                                                                                          parent_model="B")
    (row,) = V.lines(["full_vs_lora"], table, "ai2_arc__accuracy",
                     V.compare_pair(store, evals, "ai2_arc", "accuracy", n_resamples=200))
    assert row.verdict == V.UNDECIDED and row.ci is None
    assert "NOT like for like" in row.note and "vllm bfloat16" in row.note and "hf float32" in row.note, row.note
