"""The degradation table from storage alone: one row per quantized model, tolerant of models
without a quantizer report or evaluations (the study's own models), and a section of the run report."""
from __future__ import annotations

from flows.report import RunInfo, build_report
import pandas as pd

from flows.report_ptq import BASE_COLUMNS, degradation_table, markdown_section
from tests.unit.test_aggregate import seed_study


def test_one_row_per_quantized_model_and_a_report_section(store, tmp_path):
    evals = seed_study(store, tmp_path)
    table = degradation_table(store)
    assert list(table.columns[: len(BASE_COLUMNS)]) == BASE_COLUMNS
    assert sorted(table["model"]) == sorted(m for m, _ in evals if m.endswith(("_Int8_BnB", "_4bit_BnB")))
    assert set(table["quant_tag"]) == {"Int8_BnB", "4bit_BnB"}
    assert table["kl_mean"].isna().all()  # no quantizer report: the columns stay empty, nothing fails
    steps = [{"key": f"evaluate:{m}/{e}", "stage": "evaluate", "output": f"{m}/{e}", "status": "skipped"}
             for m, e in evals]
    steps += [{"key": f"quantize:{m}", "stage": "quantize", "output": m, "status": "succeeded"}
              for m in table["model"]]
    out = build_report(store, RunInfo("phase3", "r1"), steps, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Post-training quantization: degradation per method" in md and "Qwen3-4B-base_Int8_BnB" in md
    assert (tmp_path / "report" / "ptq_degradation.csv").exists() and out["uri"] == "s3://reports/phase3/r1/"


def test_the_seeds_of_a_configuration_fold_into_one_row(store, tmp_path):
    """Three seeds of a LoRA fine-tune, each quantized to INT8: one row (mean, sd across seeds,
    n_seeds), the task difference paired on items and seeds; an unseeded quantization keeps its row."""
    import json

    import numpy as np
    import pytest

    from services.common.storage import artifacts
    from tests.unit.test_seed_report import _evaluation, _model, _right

    def quantized(name, parent, kl):
        d = tmp_path / "q" / name
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "quantization_report.json").write_text(json.dumps({"quality": {"kl_mean": kl}}))
        artifacts.commit_dir(store, "models", name, d, {"name": name, "kind": "quantized", "parents": [parent],
                                                         "quantization": {"quant_tag": "Int8_BnB", "method": "bnb_int8"}})
    _model(store, tmp_path, "B", {"kind": "base"})
    _evaluation(store, tmp_path, "B", _right(10))
    quantized("B_Int8_BnB", "B", 0.5)
    _evaluation(store, tmp_path, "B_Int8_BnB", _right(8))
    for s, (k, lost, kl) in enumerate(((30, 1, 0.01), (20, 3, 0.02), (34, 2, 0.03)), 1):
        ft, q = f"B-arc_SFT_LoRa4_s{s}_NoQuant", f"B-arc_SFT_LoRa4_s{s}_Int8_BnB"
        _model(store, tmp_path, ft, {"kind": "trained", "base_model": "B", "parents": ["B"]})
        quantized(q, ft, kl)
        _evaluation(store, tmp_path, ft, _right(k))
        _evaluation(store, tmp_path, q, _right(k - lost))
    table = degradation_table(store).set_index("model")
    assert sorted(table.index) == ["B-arc_SFT_LoRa4_Int8_BnB", "B_Int8_BnB"]
    row = table.loc["B-arc_SFT_LoRa4_Int8_BnB"]
    assert (row.n_seeds, row.seeds, row.parent) == (3, "1,2,3", "B-arc_SFT_LoRa4_NoQuant")
    assert row.kl_mean == pytest.approx(0.02) and row.kl_mean__sd_seeds == pytest.approx(0.01)
    per_seed = -100 * np.array([1, 3, 2]) / 40  # each seed's INT8 against its own source
    assert row.ai2_arc__diff == pytest.approx(per_seed.mean(), abs=1e-3)
    assert row.ai2_arc__diff__sd_seeds == pytest.approx(per_seed.std(ddof=1), abs=1e-3)
    lo, hi = row.ai2_arc__ci95
    assert lo < per_seed.mean() < hi <= 0 and pd.isna(row.ai2_arc__mcnemar_p) and row.ai2_arc__n == 40
    one = table.loc["B_Int8_BnB"]
    assert one.n_seeds == 1 and one.ai2_arc__diff == -5.0 and one.ai2_arc__mcnemar_p is not None
    assert "paired on items and seeds" in "\n".join(markdown_section(table.reset_index()))


def test_without_seeds_the_section_shows_no_seed_columns(store, tmp_path):
    seed_study(store, tmp_path)
    table = degradation_table(store)
    assert set(table.n_seeds) == {1}
    header = next(x for x in markdown_section(table) if x.startswith("| model"))
    assert "n_seeds" not in header and "seeds" not in header
