r"""Every registered task, and so every task type, walks through every table that needs it: the
``ftlab`` and ``study`` scorers, the bootstrap CIs, the summary (its headline and metric columns),
the comparisons (each lead metric of its type), report.md / report.html, the Prefect summary
artifact and the ``ftlab eval`` help. A task or type missing from any of them fails here: the BoolQ defect (it shipped as a task
but the lead table and the headline columns did not know it) fails ``test_every_task_reaches_every_report_table``.

The evaluations are made from real scoring (``ftlab score``'s path) of synthetic outputs: for each
task rows with two gold answers its type accepts, a "base" that answers half wrong and half
unboxed, a fine-tune that writes the training target (``tasks.format_target``) of every item.

``test_a_new_task_is_one_yaml_file`` adds tasks of existing types as YAML files only and takes
them through import, scoring and the report with no code change.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from flows.aggregate import summary_table, task_headlines
from flows.comparisons import lead_table, vs_parent_table
from flows.publish import summary_columns
from flows.report import RunInfo, build_report, shown_columns
from services.common.storage import artifacts
from services.common.data import tasks
from services.common.data.task_types import all_types, get_type
from services.evaluator import study
from services.evaluator.score import score_items

N = 20
# Gold candidates: each task keeps the first two its type accepts ("" is SQuAD's unanswerable).
CANDIDATES = ["", "A", "B", "True", "False", "42", "7"]


def rows_of(task: tasks.TaskDef) -> list[dict]:
    """N dataset rows whose golds alternate between the first two candidates the type accepts."""
    ok = [c for c in CANDIDATES if task.type.gold_problem(task, c) is None]
    assert len(ok) >= 2, f"{task.name}: no two gold answers among {CANDIDATES}"
    return [{"id": str(i), "answer": ok[i % 2]} for i in range(N)]


def outputs_of(task: tasks.TaskDef, rows: list[dict], model: str) -> list[str]:
    """The fine-tune writes each row's training target; the base is unboxed on even items and
    gives the next differently-answered row's target on odd ones (wrong, in format)."""
    targets = [tasks.format_target(task, r) for r in rows]
    if model == "ft":
        return targets
    golds = [tasks.gold_answer(task, r) for r in rows]
    out = []
    for i, g in enumerate(golds):
        j = next((k for k in range(i + 1, i + len(rows)) if golds[k % len(rows)] != g), None)
        out.append("I am not sure." if i % 2 == 0 or j is None else targets[j % len(rows)])
    return out


def commit_evaluation(store, tmp_path, model: str, task_rows: dict[str, list[dict]]) -> None:
    datasets, study_blocks, preds = {}, {}, []
    for name, rows in task_rows.items():
        task = tasks.get_task(name)
        outputs = outputs_of(task, rows, model)
        golds = [tasks.gold_answers(task, r) if task.type.multi_gold else tasks.gold_answer(task, r) for r in rows]
        block = score_items(task, outputs, golds, "ftlab", n_resamples=100)  # ftlab score's path
        items = block.pop("items")
        datasets[task.name] = {k: v for k, v in block.items() if k not in ("task", "profile")} | {
            "latency_seconds": {"mean": 0.5}}
        first = [task.type.study_input_gold(task, g) for g in golds]
        study_blocks[task.name] = study.dataset_block(task.type, outputs, first, [0.5] * len(rows), [4] * len(rows))
        for r, o, it in zip(rows, outputs, items):
            preds.append({"task": task.name, "id": str(r["id"]), "prompt_sha256": "x", "output": o,
                          "parsed": it["parsed"], "gold": tasks.gold_answer(task, r),
                          "golds": tasks.gold_answers(task, r)})
    d = tmp_path / "e" / model
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "datasets": datasets, "study_profile": {"datasets": study_blocks}, "summary": {},
        "hardware": {"device": "cpu"}}))
    pd.DataFrame(preds).to_parquet(d / "predictions.parquet")
    artifacts.commit_dir(store, "evaluations", f"{model}/e1", d, {"kind": "evaluation"})


def commit_model(store, tmp_path, name: str, manifest: dict) -> None:
    d = tmp_path / "m" / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    artifacts.commit_dir(store, "models", name, d, {"name": name, **manifest})


def walk(store, tmp_path, task_list: list[tasks.TaskDef], task_rows: dict[str, list[dict]] | None = None) -> dict:
    """Evaluate a base and its fine-tune on ``task_list`` (rows: ``task_rows`` or ``rows_of``),
    build the report; return what it made."""
    task_rows = task_rows or {t.name: rows_of(t) for t in task_list}
    commit_model(store, tmp_path, "base", {"kind": "base"})
    commit_model(store, tmp_path, "ft", {"kind": "trained", "base_model": "base", "parents": ["base"]})
    for model in ("base", "ft"):
        commit_evaluation(store, tmp_path, model, task_rows)
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


NEW_TASKS = {
    "sciq.yaml": r"""
name: sciq
short: sciq
type: mcq4
title: SciQ (4-way MCQ)
system_prompt: Answer the science question. Output only the option letter inside \boxed{}, e.g. \boxed{A}.
user_template: "{question}"
hf_stem: sciq
fields: {question: question_stem}
metrics:
  - {metric: accuracy, higher_is_better: true}
  - {metric: macro_f1, higher_is_better: true}
""",
    "strategyqa.yaml": r"""
name: strategyqa
short: strategyqa
type: boolq
title: StrategyQA (yes/no)
system_prompt: Answer the question with True (yes) or False (no) inside \boxed{}, e.g. \boxed{True}.
user_template: "Question: {question}"
hf_stem: strategyqa
""",
}


def _records(task: str, n: int) -> list[dict]:
    if task == "sciq":
        return [{"id": f"s{i}", "question_stem": f"Which item {i} is a gas?",
                 "choices": {"label": ["A", "B", "C", "D"], "text": ["ice", "steam", "rock", "wood"]},
                 "answerKey": "ABCD"[i % 4]} for i in range(n)]
    return [{"id": f"q{i}", "question": f"Is {i} even?", "answer": i % 2 == 0} for i in range(n)]


@pytest.fixture
def new_task_dir(tmp_path):
    """FTLAB_TASK_DIRS holding the new YAMLs for one test; the registry restored afterwards."""
    import os
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    for name, text in NEW_TASKS.items():
        (folder / name).write_text(text)
    saved = os.environ.get("FTLAB_TASK_DIRS")
    os.environ["FTLAB_TASK_DIRS"] = str(folder)
    tasks.reload_tasks()
    yield folder
    if saved is None:
        os.environ.pop("FTLAB_TASK_DIRS", None)
    else:
        os.environ["FTLAB_TASK_DIRS"] = saved
    tasks.reload_tasks()


def test_a_new_task_is_one_yaml_file(store, tmp_path, new_task_dir):
    """A task of an existing type (multiple choice, yes/no) as one YAML file in FTLAB_TASK_DIRS:
    imported from HF-schema JSON Lines, scored under both profiles, in every report table."""
    from services.common.data.importing import import_dataset, load_split
    data = tmp_path / "hf"
    data.mkdir()
    rows = {}
    for name in ("sciq", "strategyqa"):
        for split, n in (("train", 8), ("test", N)):
            (data / f"{name}-{split}.jsonl").write_text(
                "\n".join(json.dumps(r) for r in _records(name, n)) + "\n")
        manifest = import_dataset(store, name, "hf", data)
        assert manifest["splits"]["test"]["rows"] == N, manifest
        rows[name] = load_split(store, name, "test").to_dict("records")
    sciq = tasks.get_task("sciq")
    assert rows["sciq"][1]["question"] == "Which item 1 is a gas? A. ice B. steam C. rock D. wood"
    assert rows["sciq"][1]["answer"] == "B" and tasks.format_target(sciq, rows["sciq"][1]) == "\\boxed{B}"
    assert sciq.headline == ("accuracy", True)
    strategyqa = tasks.get_task("strategyqa")
    assert strategyqa.headline == strategyqa.type.default_metrics[0]  # no ``metrics:``: the type's
    made = walk(store, tmp_path, [sciq, strategyqa], rows)
    assert not {t.name: m for t in (sciq, strategyqa) if (m := check_task(t, made))}
    acc = made["vs"][(made["vs"].metric == "accuracy")].set_index("task")
    assert acc.loc["sciq", "value"] == 100.0 and acc.loc["strategyqa", "value"] == 100.0


MECHANISM = ["services/common/data/tasks.py", "services/common/data/importing.py", "services/common/data/prepare.py",
             "services/common/data/leakage.py", "services/evaluator/metrics.py", "services/evaluator/stats.py",
             "services/evaluator/study.py", "services/evaluator/score.py", "services/evaluator/compare.py",
             "flows/comparisons.py", "flows/aggregate.py", "flows/report.py", "flows/report_profiles.py",
             "flows/report_ptq.py", "flows/plots.py", "flows/publish.py"]


def test_mechanism_modules_name_no_task_and_no_task_type():
    """Their string literals (docstrings aside) are never a task's name or short name, nor a type's
    name: what differs per task is in its YAML, per type in its plugin."""
    import ast
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    names = {n.lower() for t in tasks.list_tasks() for n in (t.name, t.short)} | {t.name for t in all_types()}
    found = []
    for rel in MECHANISM:
        tree = ast.parse((root / rel).read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        found += [f"{rel}:{n.lineno}: {n.value!r}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
                  and n.value.lower() in names]
    assert not found, found
