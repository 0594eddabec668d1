"""Does every dataset split the plan reads exist, or will the plan's data step make it? Checked at
the door of ``ftlab run`` (``--dry-run`` too) and of the flow, against storage and the experiment's
``data`` section, before anything runs: a learning-rate sweep whose ``select_on`` dataset has no
validation split (a dataset prepared by ``study-arc``, a plain ``ftlab data import``) used to train
every candidate and then fail each validation evaluation.

A dataset's splits come from, in this order: its manifest in storage; the recipe that
``data.prepare`` names for it (the splits it draws); the import ``data.source`` makes
(:data:`IMPORTED_SPLITS`). A dataset none of these describes is left to the data step, which
says how to import it."""
from __future__ import annotations

from typing import Any

from flows.experiment import Experiment
from services.common.contract.errors import FtlabError
from services.common.data.tasks import get_task
from services.common.storage import artifacts
from services.common.storage.store import ObjectStore
from services.evaluator.config import PARAMS as EVAL_PARAMS

IMPORTED_SPLITS = ("train", "test")  # importing.import_dataset's splits, as the flow's data step calls it


def reads(exp: Experiment) -> dict[tuple[str, str], dict[str, Any]]:
    """(dataset, split) -> {"task", "steps"}: every split a step of the plan reads (a training step
    its dataset's train split, an evaluation each task's dataset and split), with the steps."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for s in exp.steps:
        if s.stage == "train":
            items = [(s.spec["dataset"], "train", "")]
        elif s.stage == "evaluate":
            items = [(t.get("dataset") or get_task(t["task"]).short, t.get("split") or EVAL_PARAMS["tasks.split"].default,
                      get_task(t["task"]).name) for t in s.spec["tasks"]]
        else:
            continue
        for dataset, split, task in items:
            entry = out.setdefault((dataset, split), {"task": task, "steps": []})
            entry["task"] = entry["task"] or task
            entry["steps"].append(s)
    return out


def splits_of(store: ObjectStore | None, exp: Experiment, dataset: str) -> tuple[list[str] | None, str, str]:
    """(the dataset's splits, where they come from, its task) — (None, "", "") when nothing says."""
    manifest = None
    if store is not None:
        try:
            manifest = artifacts.read_manifest(store, "datasets", dataset)
        except FtlabError:  # storage unreachable: what it holds is unknown
            manifest = None
    if manifest is not None:
        return sorted(manifest.get("splits", {})), f"dataset {dataset!r} in storage", manifest.get("task", "")
    recipe = ((exp.data or {}).get("prepare") or {}).get(dataset)
    if recipe is not None:
        from services.common.data.prepare import load_recipe
        try:
            r = load_recipe(str(recipe), check_sources=False)
        except FtlabError:  # a bad recipe is the schema's problem (experiment_spec._check_prepare)
            return None, "", ""
        return sorted(r["splits"]), f"recipe {recipe!r} (data.prepare.{dataset})", r.get("task", "")
    if exp.data:
        return list(IMPORTED_SPLITS), f"the data section's import (source {exp.data.get('source', 'seed')})", ""
    return None, "", ""


def recipes_with(split: str, task: str) -> list[str]:
    """The shipped recipes that draw ``split`` for ``task`` (a fix to suggest)."""
    from services.common.data.prepare import load_recipe, shipped_recipes
    out = []
    for name in shipped_recipes():
        try:
            r = load_recipe(name, check_sources=False)
        except FtlabError:
            continue
        if split in r.get("splits", {}) and (not task or get_task(r["task"]).name == get_task(task).name):
            out.append(name)
    return out


def split_problems(store: ObjectStore | None, exp: Experiment) -> list[str]:
    """Every split the plan reads that its dataset does not have and will not get, one line each:
    the dataset, where its splits come from, who reads it, and how to get the split."""
    problems = []
    for (dataset, split), r in reads(exp).items():
        have, source, task = splits_of(store, exp, dataset)
        if have is None or split in have:
            continue
        task = task or r["task"]
        sweep = any(s.stage == "evaluate" and "select_group" in s.labels and s.labels.get("split") == split
                    for s in r["steps"])
        who = ("lr_sweep.select_on: the sweep's validation evaluations" if sweep
               else f"{len(r['steps'])} step(s), e.g. {r['steps'][0].key}")
        recipes = recipes_with(split, task)
        fix = (f"prepare a dataset that has it (`ftlab data prepare {recipes[0]}`"
               + (f"; recipes with a {split} split: {', '.join(recipes)}" if len(recipes) > 1 else "")
               + f"), and read that dataset, or add it to data.prepare (e.g. {{{recipes[0]}: {recipes[0]}}})"
               if recipes else f"prepare it with a recipe that draws a {split} split (docs/DATA.md)")
        problems.append(f"dataset {dataset!r} has no {split!r} split (its splits: {', '.join(have) or 'none'}; "
                        f"from {source}), read by {who}; {fix}")
    return problems

