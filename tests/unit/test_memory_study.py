"""The training-memory estimate against the study's own measurements: every row of
../shared/seed/metrics_summary.csv (read at run time, never copied), with the settings phase3.yaml
trains it with, as `ftlab run phase3 --dry-run` shows them on a GPU. Placement reserves devices
by this estimate, so a row more than 15 % off in either direction fails: too high refuses jobs on
GPUs that ran them (the 8B adapters read 2.5x before phase3.yaml set gradient checkpointing for
every training, as the study ran them), too low overcommits a device."""
from __future__ import annotations

import csv

import pytest

from flows.dryrun import step_estimate
from flows.experiment import load
from tests.conftest import SHARED, require_shared

TOLERANCE = 0.15


def study_rows() -> list[dict[str, str]]:
    require_shared()
    with open(SHARED / "seed" / "metrics_summary.csv") as fh:
        return list(csv.DictReader(fh))


def test_every_row_of_the_studys_table_is_accounted_for():
    """A row the study trained (training peak > 0) is a training step of phase3, whose estimate
    the next test checks. The others measured no training: base models evaluated as they are
    and post-training quantizations (their eval_* columns are inference memory, which this
    training estimate does not model: no training step makes them, so nothing reserves a device
    for their training)."""
    rows = study_rows()
    assert len(rows) == 12
    exp = load("phase3")
    trained = {s.output for s in exp.stage("train")}
    quantized = {s.output for s in exp.stage("quantize")}
    for row in rows:
        model, peak = row["model"], float(row["train_peak_vram_reserved_gb"])
        if peak > 0:
            assert model in trained, f"{model}: the study trained it; phase3 has no training step for it"
        else:
            assert model not in trained, f"{model}: the study measured no training; phase3 trains it"
            assert model in exp.inputs or model in quantized, f"{model}: neither an input base nor a PTQ output"


def trained_rows() -> list[dict[str, str]]:
    if not (SHARED / "seed" / "metrics_summary.csv").exists():
        return []  # the accounting test above skips and says why
    return [r for r in study_rows() if float(r["train_peak_vram_reserved_gb"]) > 0]


@pytest.mark.parametrize("row", trained_rows(), ids=lambda r: r["model"])
def test_the_estimate_holds_every_trained_row_of_the_study_within_15_percent(row):
    """The dry run's number (the trainer's at-submit estimate on a CUDA GPU, worst case
    batch x max_seq_length tokens) against the study's peak CUDA memory reserved (GiB)."""
    step = next(s for s in load("phase3").stage("train") if s.output == row["model"])
    est = step_estimate(step, None, "cuda")
    measured = float(row["train_peak_vram_reserved_gb"])
    error = (est["total_gb"] - measured) / measured
    parts = ", ".join(f"{k[:-3]} {v:.2f}" for k, v in est.items() if k.endswith("_gb"))
    assert abs(error) <= TOLERANCE, f"{row['model']}: estimate {est['total_gb']:.2f} GiB vs study {measured:.2f} " \
                                    f"({error:+.0%}; {parts})"
    # the allocated peak too: what torch's tensors held, below the reserved one
    assert est["total_gb"] >= float(row["train_peak_vram_allocated_gb"]) * (1 - TOLERANCE)
