"""The degradation table from storage alone: one row per quantized model, tolerant of models
without a quantizer report or evaluations (the study's own models), and a section of the run report."""
from __future__ import annotations

from flows.report import RunInfo, build_report
from flows.report_ptq import BASE_COLUMNS, degradation_table
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
