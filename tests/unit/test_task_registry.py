r"""Every registered task, and so every task type, walks through every table that needs it: the
``ftlab`` and ``study`` scorers, the bootstrap CIs, the summary (its headline and metric columns),
the comparisons (each lead metric of its type), report.md / report.html, the Prefect summary
artifact and the ``ftlab eval`` help. A task or type missing from any of them fails here: the BoolQ defect (it shipped as a task
but the lead table and the headline columns did not know it) fails ``test_every_task_reaches_every_report_table``.

The evaluations are made from real scoring of synthetic outputs: for each task two gold answers
that its type accepts, a "base" that answers half wrong and half unboxed, a fine-tune that writes
the training target (``tasks.format_target``) of every item.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from flows.aggregate import summary_table, task_headlines
from flows.comparisons import lead_table, vs_parent_table
from flows.publish import summary_columns
from flows.report import RunInfo, build_report, shown_columns
from services.common import artifacts, tasks
from services.common.task_types import all_types, get_type
from services.evaluator import study
from services.evaluator.score import score_items

N = 20
# Gold candidates: each task keeps the first two its type accepts ("" is SQuAD's unanswerable).
CANDIDATES = ["", "A", "B", "True", "False", "42", "7"]


def golds_of(task: tasks.TaskDef) -> tuple[list[str], list[str]]:
    """N golds alternating between the first two candidates the task's type accepts."""
    ok = [c for c in CANDIDATES if task.type.gold_problem(task, c) is None]
    assert len(ok) >= 2, f"{task.name}: no two gold answers among {CANDIDATES}"
    return [ok[i % 2] for i in range(N)], ok[:2]


def outputs_of(task: tasks.TaskDef, model: str) -> tuple[list[str], list[str]]:
    golds, pair = golds_of(task)
    target = {g: tasks.format_target(task, {"answer": g}) for g in pair}
    if model == "ft":
        return [target[g] for g in golds], golds
    other = {pair[0]: pair[1], pair[1]: pair[0]}
    return [target[other[g]] if i % 4 < 2 else "I am not sure." for i, g in enumerate(golds)], golds


def commit_evaluation(store, tmp_path, model: str, task_list: list[tasks.TaskDef]) -> None:
    datasets, study_blocks, rows = {}, {}, []
    for task in task_list:
        outputs, golds = outputs_of(task, model)
        block = score_items(task, outputs, golds, "ftlab", n_resamples=100)
        items = block.pop("items")
        datasets[task.name] = {k: v for k, v in block.items() if k not in ("task", "profile")} | {
            "latency_seconds": {"mean": 0.5}}
        first = [task.type.study_input_gold(task, g) for g in golds]
        study_blocks[task.name] = study.dataset_block(task.type, outputs, first, [0.5] * N, [4] * N)
        for i, (o, g, it) in enumerate(zip(outputs, golds, items)):
            row = {"answer": g}
            rows.append({"task": task.name, "id": str(i), "prompt_sha256": "x", "output": o, "parsed": it["parsed"],
                         "gold": tasks.gold_answer(task, row), "golds": tasks.gold_answers(task, row)})
    d = tmp_path / "e" / model
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "datasets": datasets, "study_profile": {"datasets": study_blocks}, "summary": {},
        "hardware": {"device": "cpu"}}))
    pd.DataFrame(rows).to_parquet(d / "predictions.parquet")
    artifacts.commit_dir(store, "evaluations", f"{model}/e1", d, {"kind": "evaluation"})


def commit_model(store, tmp_path, name: str, manifest: dict) -> None:
    d = tmp_path / "m" / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    artifacts.commit_dir(store, "models", name, d, {"name": name, **manifest})


def walk(store, tmp_path, task_list: list[tasks.TaskDef]) -> dict:
    """Evaluate a base and its fine-tune on ``task_list``, build the report; return what it made."""
    commit_model(store, tmp_path, "base", {"kind": "base"})
    commit_model(store, tmp_path, "ft", {"kind": "trained", "base_model": "base", "parents": ["base"]})
    for model in ("base", "ft"):
        commit_evaluation(store, tmp_path, model, task_list)
    evals = [("base", "e1"), ("ft", "e1")]
    steps = [{"key": f"evaluate:{m}/{e}", "stage": "evaluate", "output": f"{m}/{e}", "status": "succeeded"}
             for m, e in evals]
    out = tmp_path / "report"
    build_report(store, RunInfo("walk", "r1", description="every task"), steps, out)
    return {"table": summary_table(store, evals), "vs": vs_parent_table(store, evals, n_resamples=200),
            "md": (out / "report.md").read_text(), "html": (out / "report.html").read_text(), "out": out}


def check_task(task: tasks.TaskDef, made: dict) -> list[str]:
    """Every place ``task`` must appear; returns what is missing."""
    missing = []
    table, vs, md, page = made["table"], made["vs"], made["md"], made["html"]
    headline, _ = task.headline
    for metric, _ in task.metrics:
        if f"{task.name}__{metric}" not in table.columns:
            missing.append(f"summary column {task.name}__{metric}")
    if headline in task.type.ci_metrics and f"{task.name}__{headline}__ci95_low" not in table.columns:
        missing.append(f"summary CI column {task.name}__{headline}__ci95_low")
    if f"{task.name}__accuracy__study" not in table.columns:
        missing.append(f"study-profile column {task.name}__accuracy__study")
    if f"{task.name}__{headline}" not in shown_columns(table):
        missing.append(f"report summary table column {task.name}__{headline}")
    if task.name not in task_headlines():
        missing.append("headline (task_headlines)")
    if f"{task.name}__{headline}" not in summary_columns():
        missing.append("Prefect summary artifact column (flows/publish.py)")
    got = set(vs[(vs.task == task.name) & (vs.model == "ft")].metric)
    for metric in task.type.lead_metrics:
        if metric not in got:
            missing.append(f"comparison row {task.name} {metric}")
    lead = lead_table(vs)
    if task.name not in set(lead.task):
        missing.append("lead table")
    if f"{task.name} {headline} (" not in md:
        missing.append("report.md headline sentence")
    if f"| {task.name} " not in md.split("## Summary")[0]:
        missing.append("report.md lead table")
    if task.name not in page.split("<h2>Summary</h2>")[0]:
        missing.append("report.html lead table")
    if f"{task.name}__{headline}" not in page:
        missing.append("report.html summary column")
    return missing


def test_every_type_has_what_the_tables_read():
    for t in all_types():
        assert get_type(t.name) is t
        assert t.columns and "answer" in t.columns and "id" in t.columns, t.name
        assert {"accuracy", "format_success_rate"} <= set(t.ci_metrics), t.name
        assert set(t.lead_metrics) <= set(t.ci_metrics), f"{t.name}: a lead metric without a paired CI"
        assert t.default_metrics and t.study_title and t.profile_note, t.name
    with pytest.raises(Exception, match="unknown task type 'chess'.*known: boolq, math_numeric, mcq4, squad_v2"):
        get_type("chess")


def test_every_task_reaches_every_report_table(store, tmp_path):
    task_list = tasks.list_tasks()
    assert {t.type.name for t in task_list} == {t.name for t in all_types()}  # every type has a shipped task
    made = walk(store, tmp_path, task_list)
    problems = {t.name: m for t in task_list if (m := check_task(t, made))}
    assert not problems, problems
    # the fine-tune writes every target: its format success is 100 % on every task, the base's 50 %
    fmt = made["vs"][(made["vs"].metric == "format_success_rate")]
    assert set(fmt.task) == {t.name for t in task_list}
    assert (fmt.value == 100.0).all() and (fmt.parent_value == 50.0).all()
    # the study profile: why the two profiles differ is explained per type where they do
    for t in task_list:
        if f"**{t.name}**" in made["md"]:
            assert t.type.profile_note[:40] in made["md"]


def test_boolq_leads_with_its_yaml_metrics(store, tmp_path):
    boolq = tasks.get_task("boolq")
    assert boolq.headline == ("MCC", True)
    made = walk(store, tmp_path, [boolq])
    assert not check_task(boolq, made)
    rows = made["vs"][made["vs"].task == "boolq"].set_index("metric")
    assert list(rows.index) == list(boolq.type.lead_metrics)
    assert rows.loc["accuracy", "value"] == 100.0 and rows.loc["MCC", "value"] == 1.0
    assert "boolq MCC (higher is better)" in made["md"]


def test_ftlab_eval_help_lists_every_task(capsys):
    from ftlab.cli import main
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for t in tasks.list_tasks():
        assert t.name in text, t.name
