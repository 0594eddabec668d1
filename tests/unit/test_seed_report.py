"""The report with seeds (issue 25): a configuration's seeds fold into one summary row, comparisons
pair items and seeds, and a parent scored under another engine is re-scored like the child or the
row says it is not like for like. Storage as the services commit it (LocalStore)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from flows.aggregate import configuration_table
from flows.comparisons import lead_table, vs_parent_table
from services.common.storage import artifacts
from services.evaluator import stats

GOLDS = list("ABCD" * 10)


def _model(store, tmp_path, name, manifest):
    d = tmp_path / "m" / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    artifacts.commit_dir(store, "models", name, d, {"name": name, **manifest})


def _evaluation(store, tmp_path, model, parsed, eval_id="e1", engine="hf", dtype="float32"):
    d = tmp_path / "e" / model / eval_id
    d.mkdir(parents=True)
    acc = 100.0 * np.mean([p == g for p, g in zip(parsed, GOLDS)])
    (d / "metrics.json").write_text(json.dumps({
        "eval_id": eval_id, "engine": {"name": engine, "dtype": dtype}, "hardware": {"dtype": dtype},
        "spec": {"max_new_tokens": 8}, "summary": {},
        "datasets": {"ai2_arc": {"type": "mcq4", "metrics": {"accuracy": acc}, "latency_seconds": {"mean": 0.1},
                                 "accuracy": acc, "format_success_rate": 100.0, "total_samples": len(parsed)}}}))
    pd.DataFrame({"task": "ai2_arc", "id": [str(i) for i in range(len(GOLDS))], "prompt_sha256": "x",
                  "parsed": parsed, "gold": GOLDS}).to_parquet(d / "predictions.parquet")
    artifacts.commit_dir(store, "evaluations", f"{model}/{eval_id}", d, {"kind": "evaluation"})


def _right(k):  # the first k items right, the rest answered wrongly
    return [g if i < k else ("B" if g == "A" else "A") for i, g in enumerate(GOLDS)]


@pytest.fixture
def seeded(store, tmp_path):
    _model(store, tmp_path, "B", {"kind": "base"})
    evals = [("B", "e1")]
    _evaluation(store, tmp_path, "B", _right(10))
    for s, k in ((1, 30), (2, 20), (3, 34)):
        ft, q = f"B-arc_SFT_LoRa4_s{s}_NoQuant", f"B-arc_SFT_LoRa4_s{s}_Int8_BnB"
        _model(store, tmp_path, ft, {"kind": "trained", "base_model": "B", "parents": ["B"]})
        _model(store, tmp_path, q, {"kind": "quantized", "parents": [ft]})
        _evaluation(store, tmp_path, ft, _right(k))
        _evaluation(store, tmp_path, q, _right(k - 1))
        evals += [(ft, "e1"), (q, "e1")]
    return store, evals


def test_seeds_fold_into_one_row_with_sd_and_a_two_level_interval(seeded):
    store, evals = seeded
    by_model = pd.DataFrame([{"model": m, "eval_id": e, "ai2_arc__accuracy": 100.0 * np.mean(
        [p == g for p, g in zip(_right({"B": 10}.get(m) or {"1": 30, "2": 20, "3": 34}[m.split("_s")[1][0]]
                                        - m.endswith("BnB")), GOLDS)]), "method": "lora"} for m, e in evals])
    t = configuration_table(store, by_model, n_resamples=2000).set_index("model")
    assert list(t.index) == ["B", "B-arc_SFT_LoRa4_NoQuant", "B-arc_SFT_LoRa4_Int8_BnB"]
    ft = t.loc["B-arc_SFT_LoRa4_NoQuant"]
    per_seed = np.array([75.0, 50.0, 85.0])
    assert (ft.n_seeds, ft.seeds) == (3, "1,2,3") and ft.ai2_arc__accuracy == pytest.approx(per_seed.mean())
    assert ft.ai2_arc__accuracy__sd_seeds == pytest.approx(per_seed.std(ddof=1), abs=1e-3)
    order = sorted(range(len(GOLDS)), key=str)  # the shared items, by id
    want = stats.replicated_ci("mcq4", [[_right(k)[i] for i in order] for k in (30, 20, 34)],
                               [GOLDS[i] for i in order], 2000, 0)["accuracy"]["ci95"]
    assert [ft.ai2_arc__accuracy__ci95_low, ft.ai2_arc__accuracy__ci95_high] == want
    assert t.loc["B"].n_seeds == 1


def test_comparisons_pair_seeds_and_items(seeded):
    store, evals = seeded
    vs = vs_parent_table(store, evals, n_resamples=2000)
    ptq = vs[(vs.model == "B-arc_SFT_LoRa4_Int8_BnB") & (vs.metric == "accuracy")].iloc[0]
    # each seed's PTQ loses exactly one item against its own source: paired by seed, no seed noise
    assert ptq.vs == "B-arc_SFT_LoRa4_NoQuant" and ptq.n_seeds == 3 and ptq["diff"] == pytest.approx(-2.5)
    assert ptq.sd_seeds == 0 and ptq.like_for_like and ptq.engine == "hf float32"
    ft = vs[(vs.model == "B-arc_SFT_LoRa4_NoQuant") & (vs.metric == "accuracy")].iloc[0]
    assert ft.vs == "B" and ft["diff"] == pytest.approx(np.mean([50.0, 25.0, 60.0])) and ft.clear
    assert "3 (sd" in lead_table(vs).set_index("model").loc["B-arc_SFT_LoRa4_NoQuant", "seeds"].iloc[0]


def test_a_parent_scored_under_another_engine_is_rescored_or_not_called(store, tmp_path):
    _model(store, tmp_path, "S", {"kind": "base"})
    _model(store, tmp_path, "S_Int8_BnB", {"kind": "quantized", "parents": ["S"]})
    _evaluation(store, tmp_path, "S", _right(40), engine="vllm", dtype="bfloat16")
    _evaluation(store, tmp_path, "S_Int8_BnB", _right(10))  # far worse, but on another engine
    vs = vs_parent_table(store, [("S", "e1"), ("S_Int8_BnB", "e1")])
    row = vs[vs.metric == "accuracy"].iloc[0]
    assert not row.like_for_like and not row.clear and row.parent_engine == "vllm bfloat16"
    assert "NOT like for like" in row.note and "--engine hf --dtype float32" in row.note
    assert set(lead_table(vs)["clear?"]) == {"not like for like"}
    _evaluation(store, tmp_path, "S", _right(12), eval_id="e-hf")  # the parent scored again on HF fp32
    row = vs_parent_table(store, [("S", "e1"), ("S_Int8_BnB", "e1")]).query("metric == 'accuracy'").iloc[0]
    assert row.like_for_like and row.parent_value == 30.0 and "S/e-hf" in row.note


def test_configurations_of_one_base_are_compared_on_the_seeds_they_share(store, tmp_path):
    """LoRA and full FT with seeds 1-3, DoRA with seeds 1-2: every pair of fine-tunes of B, paired on
    items and on the seeds both have; the report gets the section and configuration_comparisons.csv."""
    from flows.comparisons import BETWEEN, between_configurations
    from flows.report import RunInfo, build_report
    _model(store, tmp_path, "B", {"kind": "base"})
    _evaluation(store, tmp_path, "B", _right(10))
    evals = [("B", "e1")]
    for tag, rights in (("LoRa8", (20, 21, 22)), ("Full", (34, 35, 36)), ("DoRa8", (20, 30))):
        for s, k in enumerate(rights, 1):
            name = f"B-arc_SFT_{tag}_s{s}_NoQuant"
            _model(store, tmp_path, name, {"kind": "trained", "base_model": "B", "parents": ["B"]})
            _evaluation(store, tmp_path, name, _right(k))
            evals.append((name, "e1"))
    t = between_configurations(store, evals, n_resamples=500)
    acc = t[t.metric == "accuracy"].set_index(["model", "vs"])
    assert set(t.relation) == {BETWEEN} and len(acc) == 3  # three configurations: three pairs, no base
    full = acc.loc[("B-arc_SFT_LoRa8_NoQuant", "B-arc_SFT_Full_NoQuant")]  # sorted names: LoRa8 - Full
    assert full.n_seeds == 3 and full["diff"] == pytest.approx(-35.0) and full.clear and full.sd_seeds == 0
    dora = acc.loc[("B-arc_SFT_LoRa8_NoQuant", "B-arc_SFT_DoRa8_NoQuant")]
    assert dora.n_seeds == 2 and dora["diff"] == pytest.approx(100 * ((20 - 20) + (21 - 30)) / 2 / 40, abs=1e-3)
    steps = [{"key": f"evaluate:{m}/{e}", "stage": "evaluate", "output": f"{m}/{e}", "status": "succeeded"}
             for m, e in evals]
    build_report(store, RunInfo("p", "r1"), steps, tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.index("## Configurations against each other") < md.index("## Summary")
    assert len(pd.read_csv(tmp_path / "rep" / "configuration_comparisons.csv")) == len(t)
    assert "<h2>Configurations against each other</h2>" in (tmp_path / "rep" / "report.html").read_text()


def test_a_group_of_too_many_configurations_is_named_not_tabulated(store, tmp_path, monkeypatch):
    from flows import comparisons
    monkeypatch.setattr(comparisons, "MAX_CONFIGURATIONS", 1)
    _model(store, tmp_path, "B", {"kind": "base"})
    _evaluation(store, tmp_path, "B", _right(10))
    for tag in ("LoRa8", "Full"):
        _model(store, tmp_path, f"B-arc_SFT_{tag}_NoQuant", {"kind": "trained", "base_model": "B", "parents": ["B"]})
        _evaluation(store, tmp_path, f"B-arc_SFT_{tag}_NoQuant", _right(20))
    t = comparisons.between_configurations(store, [("B", "e1"), ("B-arc_SFT_LoRa8_NoQuant", "e1"),
                                                   ("B-arc_SFT_Full_NoQuant", "e1")], n_resamples=100)
    assert t.empty and t.attrs["not_tabulated"] == {"B-arc": 2}
    assert "B-arc (2); compare two with `ftlab compare" in "\n".join(comparisons.between_markdown(t))


def test_an_unparsed_answer_stays_none_in_the_seed_tables():
    # pandas 3 reads [str, None] as a str column with NaN: the scorer then met a float (the mini-study's
    # report failed on a fine-tune that wrote no \boxed{} answer for one item)
    from flows.comparisons import items_by_id
    preds = pd.DataFrame({"task": "squad_v2", "id": ["1", "2", "3"], "parsed": ["Paris", None, ""],
                          "gold": ["Paris", "Rome", ""]})
    items = items_by_id(preds, "squad_v2", "squad_v2")
    assert list(items.parsed) == ["Paris", None, ""]
    ci = stats.replicated_ci("squad_v2", [list(items.parsed)] * 2, list(items.gold), 200, 0)
    # the unparsed item scores 0 on an answerable question; "" is the right abstention
    assert (ci["F1"]["mean"], ci["HasAns_F1"]["mean"], ci["NoAns_Accuracy"]["mean"]) == (
        pytest.approx(200 / 3), 50.0, 100.0)
