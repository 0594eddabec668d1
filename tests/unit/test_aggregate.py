"""Aggregation and report from storage alone: evaluations in the study's layout (built here from
the study's own metrics_summary.csv) come back as exactly the study's columns and values, with
our columns after them; plots are real PNGs; a report rebuilds from storage."""
from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pytest

from flows.aggregate import STUDY_COLUMNS, model_facts, summary_table, task_headlines
from flows.plots import make_plots, pareto_front
from flows.report import RunInfo, build_report, latest_run, rebuild_report
from services.common.storage import artifacts
from services.common.contract.errors import NotFoundError
from tests.conftest import SHARED

PNG = b"\x89PNG\r\n\x1a\n"

# The study's three tasks with their headline metrics (from the task YAMLs).
HEADLINE = {t: task_headlines()[t] for t in ("ai2_arc", "squad_v2", "OpenMathInstruct-2")}


def _study_rows() -> list[dict]:
    with open(SHARED / "seed" / "metrics_summary.csv") as fh:
        return list(csv.DictReader(fh))


def _facts(name: str) -> dict:
    """How the study made each model, read from its name."""
    if "_SFT_" not in name:
        base, _, tag = name.partition("-base")
        return {"kind": "quantized" if tag else "base", "parent": f"{base}-base" if tag else None,
                "method": {"_Int8_BnB": "bnb_int8", "_4bit_BnB": "bnb_4bit"}.get(tag)}
    if name.endswith(("_Int8_BnB", "_4bit_BnB")):
        parent = name.rsplit("_", 2)[0] + "_NoQuant"
        return {"kind": "quantized", "parent": parent, "method": "bnb_int8" if "Int8" in name else "bnb_4bit"}
    peft = next(p for p in ("LoRa", "DoRa", "VeRa", "NoPeft") if f"_{p}" in name)
    r = int(name.split(f"_{peft}")[1].split("_")[0]) if peft != "NoPeft" else None
    return {"kind": "trained", "peft": {"LoRa": "lora", "DoRa": "dora", "VeRa": "vera", "NoPeft": "none"}[peft],
            "r": r, "tq": "qlora" if "QLORA" in name else "none", "base": name.split("-openmath")[0] + "-base"}


def seed_study(store, tmp_path, ci: bool = True) -> list[tuple[str, str]]:
    """Commit the study's 12 models (manifests, training metadata) and their evaluations."""
    evals = []
    for i, row in enumerate(_study_rows()):
        name, f = row["model"], _facts(row["model"])
        d = tmp_path / name
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"\0" * (1000 * (i + 1)))
        manifest = {"kind": f["kind"], "parents": [f["parent"]] if f.get("parent") else []}
        if f["kind"] == "trained":
            manifest |= {"parents": [f["base"]], "base_model": f["base"], "dataset": "openmath",
                         "spec": {"peft_method": f["peft"], "lora": {"r": f["r"] or 8}, "training_quant": f["tq"]},
                         "quantization": {"quant_tag": "QLORA_w4_headbf16" if f["tq"] == "qlora" else "NoQuant"}}
            (d / "training_metadata.json").write_text(json.dumps({"device": "cuda:0", "dtype": "bfloat16", "memory": {
                "peak_vram_reserved_gb": float(row["train_peak_vram_reserved_gb"]),
                "peak_vram_allocated_gb": float(row["train_peak_vram_allocated_gb"]), "peak_rss_gb": 3.0}}))
        if f["kind"] == "quantized":
            manifest |= {"spec": {"method": f["method"]},
                         "quantization": {"quant_tag": "Int8_BnB" if f["method"] == "bnb_int8" else "4bit_BnB"}}
        artifacts.commit_dir(store, "models", name, d, manifest)
        datasets = {}
        for task, (metric, _) in HEADLINE.items():
            value = float(row[f"{task}__{metric}"])
            m = {metric: value} | ({"ci95": {metric: [value * 0.9, value * 1.1]}} if ci else {})
            datasets[task] = {"metrics": m, "latency_seconds": {"mean": float(row[f"{task}__latency_mean_s"])},
                              "accuracy": 50.0, "format_success_rate": 100.0, "total_samples": 50}
        ev = tmp_path / f"{name}-eval"
        ev.mkdir()
        (ev / "metrics.json").write_text(json.dumps({"datasets": datasets, "hardware": {"device": "cuda:0"}, "summary": {
            "peak_vram_reserved_gb": float(row["eval_peak_vram_reserved_gb"]),
            "peak_vram_allocated_gb": float(row["eval_peak_vram_allocated_gb"]),
            "throughput": {"tokens_per_s": 10.0 + i}}}))
        artifacts.commit_dir(store, "evaluations", f"{name}/e1", ev, {"kind": "evaluation", "tasks": list(HEADLINE)})
        evals.append((name, "e1"))
    return evals


def test_the_study_table_comes_back_from_evaluations_in_its_layout(store, tmp_path):
    table = summary_table(store, seed_study(store, tmp_path))
    assert list(table.columns[: len(STUDY_COLUMNS)]) == STUDY_COLUMNS
    study = pd.read_csv(SHARED / "seed" / "metrics_summary.csv")
    ours = table[STUDY_COLUMNS].set_index("model").loc[study["model"]].reset_index()
    pd.testing.assert_frame_equal(ours, study, check_dtype=False)
    by = table.set_index("model")
    qlora = by.loc["Qwen3-8B-openmath_SFT_LoRa256_QLORA_w4_headbf16"]
    assert (qlora["method"], qlora["rank"], qlora["training_quant"], qlora["quant_tag"], qlora["parent_model"]) == \
        ("lora", 256, "qlora", "QLORA_w4_headbf16", "Qwen3-8B-base")
    ptq = by.loc["Qwen3-4B-openmath_SFT_NoPeft_Int8_BnB"]  # a PTQ model inherits how its source was trained
    assert (ptq["method"], ptq["ptq_method"], ptq["parent_model"]) == \
        ("full", "bnb_int8", "Qwen3-4B-openmath_SFT_NoPeft_NoQuant")
    assert by.loc["Qwen3-8B-base", "method"] == "base"
    assert qlora["train_dtype"] == "bfloat16" and pd.isna(by.loc["Qwen3-8B-base", "train_dtype"])  # trained only
    assert by.loc["Qwen3-8B-base", "squad_v2__F1__ci95_high"] == pytest.approx(55.0)
    for col in ("ai2_arc__accuracy", "OpenMathInstruct-2__format_success_rate", "eval_tokens_per_s", "model_size_gb"):
        assert table[col].notna().all(), col


def _recommit_file(store, bucket, key, data):
    """Replace one file of a committed artifact together with its manifest entry (readers check
    every file's sha256 against the manifest)."""
    import hashlib
    prefix, path = key.rsplit("/", 1)
    manifest = artifacts.read_manifest(store, bucket, prefix)
    entry = next(f for f in manifest["files"] if f["path"] == path)
    entry |= {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    store.put_bytes(bucket, key, data)
    artifacts.put_json(store, bucket, f"{prefix}/manifest.json", manifest)


def test_vram_columns_are_empty_for_jobs_that_ran_on_no_gpu(store, tmp_path):
    from flows.aggregate import summary_row
    name = next(m for m, _ in seed_study(store, tmp_path) if "_SFT_LoRa" in m)  # a trained one
    for bucket, key, device_at in (("models", f"{name}/training_metadata.json", ()),
                                   ("evaluations", f"{name}/e1/metrics.json", ("hardware",))):
        doc = json.loads(store.get_bytes(bucket, key))
        (doc[device_at[0]] if device_at else doc)["device"] = "cpu"
        _recommit_file(store, bucket, key, json.dumps(doc).encode())
    row = summary_row(store, name, "e1")
    assert [row[f"{s}_peak_vram_{k}_gb"] for s in ("train", "eval") for k in ("reserved", "allocated")] == [None] * 4
    assert row["train_peak_rss_gb"] == 3.0  # what a CPU run measured instead
    base = "Qwen3-4B-base"  # untrained and evaluated on a CPU: no training VRAM column either
    doc = json.loads(store.get_bytes("evaluations", f"{base}/e1/metrics.json"))
    doc["hardware"]["device"] = "cpu"
    _recommit_file(store, "evaluations", f"{base}/e1/metrics.json", json.dumps(doc).encode())
    assert summary_row(store, base, "e1")["train_peak_vram_reserved_gb"] is None


def test_model_facts_of_an_unknown_model_are_those_of_a_base(store):
    assert model_facts(store, "nowhere")["method"] == "base"


def test_pareto_front_keeps_only_undominated_points():
    pts = [(1.0, 0.5), (2.0, 0.4), (2.0, 0.7), (3.0, 0.9), (4.0, 0.8)]
    assert pareto_front(pts, higher_better=True) == [(1.0, 0.5), (2.0, 0.7), (3.0, 0.9)]
    assert pareto_front([(1.0, 9.0), (2.0, 3.0), (3.0, 5.0)], higher_better=False) == [(1.0, 9.0), (2.0, 3.0)]


def test_plots_are_png_files(store, tmp_path):
    table = summary_table(store, seed_study(store, tmp_path))
    written = make_plots(table, tmp_path / "plots")
    assert set(written) == {"score_vs_memory", "latency", "rank_sweep", "ptq_size"}
    for p in written.values():
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 10_000
    assert make_plots(table.iloc[0:0], tmp_path / "none") == {}  # no data: nothing drawn, no error


def test_report_is_committed_and_rebuilt_from_storage_alone(store, tmp_path):
    evals = seed_study(store, tmp_path)
    steps = [{"key": f"evaluate:{m}/{e}", "stage": "evaluate", "output": f"{m}/{e}", "status": "skipped"}
             for m, e in evals]
    steps.append({"key": "train:X", "stage": "train", "output": "X", "status": "failed", "error": "CUDA OOM"})
    info = RunInfo("phase3", "r1", description="study", started_at=1.0, finished_at=61.0)
    first = build_report(store, info, steps, tmp_path / "local" / "phase3" / "r1")
    assert first["uri"] == "s3://reports/phase3/r1/" and len(first["table"]) == 12
    keys = {k.rsplit("/", 1)[1] for k in store.list_keys("reports", "phase3/r1/")}
    assert {"metrics_summary.csv", "report.md", "report.html", "steps.json", "run.json", "manifest.json",
            "rank_sweep.png"} <= keys
    md = store.get_bytes("reports", "phase3/r1/report.md").decode()
    assert "## Failures (1)" in md and "CUDA OOM" in md and "ftlab report phase3 --run r1" in md
    assert latest_run(store, "phase3") == "r1"

    again = rebuild_report(store, "phase3", None, tmp_path / "rebuilt")
    assert again["local_dir"].endswith("rebuilt/phase3/r1")
    csv_bytes = store.get_bytes("reports", "phase3/r1/metrics_summary.csv")
    assert list(pd.read_csv(io.BytesIO(csv_bytes)).columns[: len(STUDY_COLUMNS)]) == STUDY_COLUMNS
    with pytest.raises(NotFoundError, match="runs: r1"):
        rebuild_report(store, "phase3", "r9", tmp_path / "x")
    with pytest.raises(NotFoundError, match="no report"):
        rebuild_report(store, "phase7", None, tmp_path / "x")


def test_a_metric_with_an_interval_keeps_its_value_beside_it(store, tmp_path):
    # SQuAD v2's HasAns_F1 is not a headline of the task YAML, but the evaluator gives its CI: the
    # summary had the interval without the value (the mini-study's table)
    from flows.aggregate import summary_row
    ev = tmp_path / "ev"
    ev.mkdir()
    m = {"F1": 36.2, "HasAns_F1": 11.41, "ci95": {"F1": [29.8, 42.9], "HasAns_F1": [6.2, 17.2]}}
    (ev / "metrics.json").write_text(json.dumps({"datasets": {"squad_v2": {
        "metrics": m, "latency_seconds": {"mean": 0.1}, "accuracy": 34.0, "format_success_rate": 98.5,
        "total_samples": 200}}, "hardware": {"device": "cpu"}, "summary": {}}))
    artifacts.commit_dir(store, "evaluations", "M/e1", ev, {"kind": "evaluation", "tasks": ["squad_v2"]})
    row = summary_row(store, "M", "e1")
    assert (row["squad_v2__HasAns_F1"], row["squad_v2__HasAns_F1__ci95_low"]) == (11.41, 6.2)
    assert row["squad_v2__F1"] == 36.2


def test_the_ptq_plot_draws_a_folded_source():
    # a seed-folded PTQ row names its first seed's source (..._s1_NoQuant); the table holds that
    # source folded (..._NoQuant): the mini-study's plot had the quantized points without their source
    from flows.plots import ptq_rows
    t = pd.DataFrame({"model": ["B-x_SFT_NoPeft_NoQuant", "B-x_SFT_NoPeft_GPTQ_w4", "B"],
                      "ptq_method": [None, "gptq", None], "model_size_gb": [0.54, 0.18, 0.54],
                      "parent_model": [None, "B-x_SFT_NoPeft_s1_NoQuant", None]})
    rows = ptq_rows(t)
    assert list(rows.model) == ["B-x_SFT_NoPeft_NoQuant", "B-x_SFT_NoPeft_GPTQ_w4"]
    assert rows.parent_model.iloc[1] == "B-x_SFT_NoPeft_NoQuant"
