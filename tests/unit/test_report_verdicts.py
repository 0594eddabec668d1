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
    assert "2.1 GB (lora) vs 1.5 GB (vera)" in rows[1].note
    md = "\n".join(V.markdown(rows))
    assert md.count("\n| ") == 5 and "[+1, +11]" in md and "**contradicted**" in md


def test_missing_models_are_not_decidable_and_unknown_questions_refused():
    t = table()
    rows = V.lines(["full_vs_lora", "ptq"], t[t.method != "full"], M, lambda a, b: None)
    assert [r.verdict for r in rows] == [V.UNDECIDED, V.UNDECIDED]
    assert rows[0].note.startswith("not in this run")
    p: list[str] = []
    assert V.parse(["ptq", "speed"], p) == ["ptq"] and "unknown question 'speed'" in p[0]
