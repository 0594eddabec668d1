"""An evaluation carrying both profiles aggregates to the study's columns, then the
``<task>__<metric>__study`` columns; the report says per task where the profiles differ and why.
(The evaluator writing ``study_profile`` for real: tests/integration/test_scoring_e2e.py.)"""
from __future__ import annotations

import json

import pandas as pd

from flows.aggregate import STUDY_COLUMNS, summary_table
from flows.report import RunInfo, build_report
from services.common.storage import artifacts
from services.common.data import tasks
from services.evaluator import study
from services.evaluator.score import score_items

OUTPUTS = {  # task -> (raw outputs, golds)
    "ai2_arc": (["\\boxed{A}", "\\boxed{2}", "\\boxed{the answer is C}", "nothing"], ["A", "B", "C", "D"]),
    "squad_v2": (["\\boxed{Broncos}", "no box", "\\boxed{unanswerable}"], [["Denver Broncos", "Broncos"], [], []]),
    "OpenMathInstruct-2": (["\\boxed{1,234}", "\\boxed{5}"], ["1234", "5"]),
}


def _commit_eval(store, tmp_path, model: str) -> None:
    datasets, study_blocks = {}, {}
    for task, (outs, golds) in OUTPUTS.items():
        ours = score_items(task, outs, golds, "ftlab", n_resamples=100)
        ours.pop("items")
        lat, tok = [0.5] * len(outs), [4] * len(outs)
        datasets[task] = ours | {"latency_seconds": {"mean": 0.5}}
        first = [(g or [""])[0] if isinstance(g, list) else g for g in golds]
        study_blocks[task] = study.dataset_block(tasks.get_task(task).type, outs, first, lat, tok)
    metrics = {"model_name": model, "summary": {"peak_vram_reserved_gb": 0.0}, "datasets": datasets,
               "study_profile": {"profile": "study", "datasets": study_blocks,
                                 "summary": study.summary(study_blocks, [], [])}}
    d = tmp_path / model
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps(metrics))
    artifacts.commit_dir(store, "evaluations", f"{model}/e1", d, {"kind": "evaluation"})


def test_study_columns_follow_the_studys_and_the_report_explains_differences(store, tmp_path):
    _commit_eval(store, tmp_path, "M1")
    table = summary_table(store, [("M1", "e1")])
    study_cols = [c for c in table.columns if c.endswith("__study")]
    n = len(STUDY_COLUMNS)
    assert list(table.columns[:n]) == STUDY_COLUMNS and list(table.columns[n:n + len(study_cols)]) == study_cols
    assert {"ai2_arc__macro_f1__study", "squad_v2__F1__study", "OpenMathInstruct-2__avg_abs_diff__study",
            "squad_v2__format_success_rate__study"} <= set(study_cols)
    row = table.iloc[0]
    assert row["OpenMathInstruct-2__accuracy__study"] == 50.0 and row["OpenMathInstruct-2__accuracy"] == 100.0

    steps = [{"key": "evaluate:M1/e1", "stage": "evaluate", "output": "M1/e1", "status": "succeeded"}]
    out = build_report(store, RunInfo("phase3", "r1"), steps, tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    section = md.split("## Scoring profiles: ftlab vs study", 1)[1]
    assert "| M1 | OpenMathInstruct-2 | accuracy | 100.0 | 50.0 |" in section
    assert "**squad_v2**: ftlab scores the best of ALL gold answers" in section
    assert "**ai2_arc**" in section and "Scoring profiles" in (tmp_path / "rep" / "report.html").read_text()
    csv = pd.read_csv(tmp_path / "rep" / "metrics_summary.csv")
    assert list(csv.columns[:n]) == STUDY_COLUMNS and csv.columns[n].endswith("__study")
    assert out["uri"].endswith("phase3/r1/")
