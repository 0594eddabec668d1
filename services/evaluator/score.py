r"""``ftlab score``: score raw model outputs without a model or a service, under either profile.

Input: JSON Lines, one item per line ``{"id": ..., "output": "<raw model text>", "gold": ...}``
(gold: a letter or a digit for multiple choice; a list of strings for SQuAD v2, where ``[]`` or
``""`` is unanswerable and a plain string a one-element list; a number or a numeric string for
math; true/false, "yes"/"no" for yes/no tasks), or the ``predictions.parquet`` of a stored
evaluation. Output: the task's block with the keys of ``metrics.json``'s ``datasets.<task>``
(``accuracy``, ``format_success_rate``, ``correct``, ``incorrect``, ``total_samples``,
``metrics``: ``macro_f1`` / ``EM``, ``F1``, ... / ``avg_abs_diff``, ...) and ``items``: per item
its ``id``, ``parsed`` answer (None when nothing parses) and ``correct``.

Profiles: ``ftlab`` (metrics.py, the corrected definitions, with bootstrap CIs) and ``study``
(study.py, the study's scorer exactly). Torch-free.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from services.common.data import tasks
from services.common.contract.errors import ValidationError
from services.evaluator import metrics as M
from services.evaluator import stats, study

PROFILES = ("ftlab", "study")


def ftlab_block(task: tasks.TaskDef, preds: list, golds: list, n_resamples: int = stats.DEFAULT_RESAMPLES,
                seed: int = 0) -> dict[str, Any]:
    """A task's scores in the ``ftlab`` profile, in metrics.json's layout (``type``,
    ``total_samples``, ``format_success_rate``, ``correct``, ``incorrect``, ``accuracy``,
    ``metrics`` with ``ci95``), plus ``_correct`` (per item). ``golds``: SQuAD v2 lists of answers."""
    score = M.score(task, preds, golds)
    correct = score.pop("correct")
    n, n_ok = len(preds), int(sum(correct))
    ci = stats.bootstrap_ci(task.type, preds, golds, n_resamples, seed, task.labels)
    return {"type": task.type.name, "total_samples": n,
            "format_success_rate": score["format_success_rate"] if n else 0.0, "correct": n_ok,
            "incorrect": n - n_ok, "accuracy": score["accuracy"] if n else 0.0,
            "metrics": {"task": task.title, **M.block(task, score), "ci95": ci,
                        "ci95_method": f"percentile bootstrap, {n_resamples} resamples, seed {seed}"},
            "_correct": correct}


def ftlab_correct(task: tasks.TaskDef, preds: list, golds: list) -> list[bool]:
    """Per item right/wrong under the ``ftlab`` profile (SQuAD v2: EM against every gold)."""
    return M.score(task, preds, golds)["correct"]


def gold_problem(task: tasks.TaskDef, gold: Any) -> str | None:
    """Why ``gold`` is not a usable gold of ``task`` (None when it is; the task type decides)."""
    return task.type.gold_problem(task, gold)


def score_items(task: str | tasks.TaskDef, outputs: list[str | None], golds: list, profile: str = "ftlab",
                ids: list[str] | None = None, n_resamples: int = stats.DEFAULT_RESAMPLES,
                seed: int = 0) -> dict[str, Any]:
    """Score raw outputs against golds (as in the JSONL format) under ``profile``; returns the
    task block plus ``task``, ``profile`` and ``items``. Raises ValidationError for bad golds."""
    task = tasks.get_task(task)
    if profile not in PROFILES:
        raise ValidationError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    if len(golds) != len(outputs):
        raise ValidationError(f"{len(outputs)} outputs for {len(golds)} golds")
    if not isinstance(n_resamples, int) or n_resamples < 100:
        raise ValidationError(f"bootstrap samples must be an integer >= 100, got {n_resamples!r}")
    problems = [f"item {i}: {p}" for i, g in enumerate(golds) if (p := gold_problem(task, g))]
    if problems:
        raise ValidationError(problems)
    ids = ids if ids is not None else [str(i) for i in range(len(outputs))]
    if profile == "ftlab":
        preds = [tasks.parse_answer(task, o) for o in outputs]
        canon = [task.type.canonical_gold(task, g) for g in golds]
        block = ftlab_block(task, preds, canon, n_resamples, seed)
        flags = block.pop("_correct")
    else:
        # the study's gold (SQuAD: the first answer, "" unanswerable; yes/no: "True"/"False")
        first = [task.type.study_input_gold(task, g) for g in golds]
        block = study.score_outputs(task.type, outputs, first)
        preds = [it["parsed"] for it in block["items"]]
        flags = [it["correct"] for it in block.pop("items")]
    items = [{"id": i, "parsed": p, "correct": bool(c)} for i, p, c in zip(ids, preds, flags)]
    return {"task": task.name, "profile": profile, **block, "items": items}


def read_jsonl(path: str | Path, task: str | tasks.TaskDef | None = None) -> tuple[list[str], list[str | None], list[Any]]:
    """(ids, outputs, golds) of a JSON Lines file; every bad line (and, given ``task``, every gold
    that is not one of its answers) is reported at once."""
    task = tasks.get_task(task) if task is not None else None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValidationError(f"{path}: cannot read: {e}") from None
    ids, outputs, golds, problems = [], [], [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{n}: not JSON: {e}")
            continue
        if not isinstance(rec, dict):
            problems.append(f"{path}:{n}: expected an object with output and gold")
            continue
        for k in ("output", "gold"):
            if k not in rec:
                problems.append(f"{path}:{n}: missing {k!r}")
        if rec.get("output") is not None and not isinstance(rec.get("output"), str):
            problems.append(f"{path}:{n}: output must be a string")
        if task is not None and "gold" in rec and (why := gold_problem(task, rec["gold"])):
            problems.append(f"{path}:{n}: {why}")
        ids.append(str(rec.get("id", n)))
        outputs.append(rec.get("output"))
        golds.append(rec.get("gold"))
    if not ids and not problems:
        problems.append(f"{path}: no items")
    if problems:
        raise ValidationError(problems)
    return ids, outputs, golds


def read_evaluation(store, ref: str, task: str | tasks.TaskDef) -> tuple[list[str], list[str | None], list[Any]]:
    """(ids, outputs, golds) of one task in a stored evaluation's predictions.parquet (multi-gold
    types: every gold when the evaluation stored them, else its first gold)."""
    from services.evaluator.compare import load_eval

    task = tasks.get_task(task)
    _, all_preds = load_eval(store, ref)
    df = all_preds[all_preds.task == task.name]
    if df.empty:
        raise ValidationError(f"evaluation {ref} has no predictions for task {task.name} "
                              f"(has: {sorted(set(all_preds.task))})")
    if task.type.multi_gold and "golds" in df.columns:
        golds = [[str(x) for x in g] if isinstance(g, (list, np.ndarray)) else task.type.canonical_gold(task, g)
                 for g in df.golds]
    else:
        golds = [None if g is None else str(g) for g in df.gold]
    return [str(i) for i in df.id], [None if o is None else str(o) for o in df.output], golds
