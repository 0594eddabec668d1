"""The report's lead table: each model against the model it was made from, paired on shared items,
through the same statistics as ``ftlab compare``."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from flows.comparisons import lead_table, vs_parent_table
from services.common.storage import artifacts


def _model(store, tmp_path, name, manifest):
    d = tmp_path / "m" / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    artifacts.commit_dir(store, "models", name, d, {"name": name, **manifest})


def _evaluation(store, tmp_path, model, parsed, golds):
    d = tmp_path / "e" / model
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"datasets": {"ai2_arc": {"type": "mcq4"}}}))
    pd.DataFrame({"task": "ai2_arc", "id": [str(i) for i in range(len(golds))], "prompt_sha256": "x",
                  "parsed": parsed, "gold": golds}).to_parquet(d / "predictions.parquet")
    artifacts.commit_dir(store, "evaluations", f"{model}/e1", d, {"kind": "evaluation"})


def test_fine_tune_vs_base_and_ptq_vs_source(store, tmp_path):
    golds = list("ABCD" * 5)
    _model(store, tmp_path, "base", {"kind": "base"})
    _model(store, tmp_path, "ft", {"kind": "trained", "base_model": "base", "parents": ["base"]})
    _model(store, tmp_path, "ft_q", {"kind": "quantized", "parents": ["ft"]})
    _evaluation(store, tmp_path, "base", [None] * 20, golds)            # never in the parsed format
    _evaluation(store, tmp_path, "ft", ["A"] * 20, golds)               # always boxed, right 5 of 20
    _evaluation(store, tmp_path, "ft_q", ["A"] * 19 + [None], golds)
    vs = vs_parent_table(store, [("base", "e1"), ("ft", "e1"), ("ft_q", "e1")])
    fmt = vs[(vs.model == "ft") & (vs.metric == "format_success_rate")].iloc[0]
    assert fmt.vs == "base" and fmt.relation == "fine-tune vs base" and fmt["items"] == 20
    assert (fmt.parent_value, fmt.value, fmt["diff"]) == (0.0, 100.0, 100.0)
    assert fmt.mcnemar_p == pytest.approx(2 * 0.5 ** 20, rel=1e-3) and fmt.clear          # 20 discordant pairs, all one way
    acc = vs[(vs.model == "ft") & (vs.metric == "accuracy")].iloc[0]
    # 5 discordant pairs all one way: p = 0.0625, not clear whatever the bootstrap says
    assert acc["diff"] == 25.0 and acc.mcnemar_p == pytest.approx(2 * 0.5 ** 5, rel=1e-3) and not acc.clear
    q = vs[(vs.model == "ft_q") & (vs.metric == "format_success_rate")].iloc[0]
    assert q.vs == "ft" and q.relation == "PTQ vs source" and q["diff"] == -5.0 and not q.clear
    assert not (vs.model == "base").any()                                   # a base has no parent
    lead = lead_table(vs)
    flags = list(lead["clear?"])
    assert flags == sorted(flags, reverse=True) and "95% CI" in lead.columns   # clear ones first


def test_models_without_an_evaluated_parent_are_left_out(store, tmp_path):
    _model(store, tmp_path, "ft", {"kind": "trained", "base_model": "missing", "parents": ["missing"]})
    _evaluation(store, tmp_path, "ft", ["A"], ["A"])
    assert vs_parent_table(store, [("ft", "e1")]).empty


def test_report_records_keep_small_p_values_and_nan_as_none():
    import numpy as np
    import pandas as pd
    from flows.report import records
    df = pd.DataFrame({"mcnemar_p": [1.8e-12, np.nan], "n": np.array([40, 40], dtype=np.int64),
                       "clear": [True, False], "model": ["a", "b"]})
    assert records(df) == [{"mcnemar_p": 1.8e-12, "n": 40, "clear": True, "model": "a"},
                           {"mcnemar_p": None, "n": 40, "clear": False, "model": "b"}]
