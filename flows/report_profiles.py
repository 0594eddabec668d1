"""The report's "scoring profiles" section: per task, where the ``ftlab`` and ``study`` numbers of
the same generations differ, and why (the definitions that differ, docs/EVALUATOR.md)."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from services.common.storage import artifacts
from services.common.contract.errors import ValidationError
from services.common.storage.store import ObjectStore
from services.common.data.task_types import get_type

def profile_rows(store: ObjectStore, evaluations: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """One row per (model, task, metric) whose ftlab and study values differ."""
    rows = []
    for model, eval_id in evaluations:
        ev = artifacts.read_json(store, "evaluations", f"{model}/{eval_id}", "metrics.json")
        study = (ev.get("study_profile") or {}).get("datasets", {})
        for task, ours in ev.get("datasets", {}).items():
            theirs = study.get(task)
            if theirs is None:
                continue
            pairs = {"accuracy": (ours.get("accuracy"), theirs.get("accuracy")),
                     "format_success_rate": (ours.get("format_success_rate"), theirs.get("format_success_rate"))}
            pairs |= {k: (ours["metrics"].get(k), v) for k, v in theirs.get("metrics", {}).items()
                      if k in ours.get("metrics", {}) and isinstance(v, (int, float)) and k != "support"}
            rows += [{"model": model, "task": task, "type": ours.get("type"), "metric": k, "ftlab": a, "study": b}
                     for k, (a, b) in pairs.items() if a != b]
    return rows


def profiles_markdown(store: ObjectStore, evaluations: list[tuple[str, str]]) -> str:
    rows = profile_rows(store, evaluations)
    lines = ["", "## Scoring profiles: ftlab vs study", "",
             "Every evaluation is scored twice from the same generations: `ftlab` (the table above) and the "
             "study's scorer reproduced exactly (`study_profile` in metrics.json, the `__study` columns of "
             "metrics_summary.csv). Definitions: docs/EVALUATOR.md.", ""]
    if not rows:
        return "\n".join(lines + ["The two profiles agree on every metric of this run.", ""])
    lines += ["| model | task | metric | ftlab | study |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['task']} | {r['metric']} | {r['ftlab']} | {r['study']} |" for r in rows]
    lines += ["", "Why they differ:", ""]
    by_task = {r["task"]: r["type"] for r in rows}
    lines += [f"- **{t}**: {_why(ty)}" for t, ty in by_task.items()]
    return "\n".join(lines + [""])


def _why(task_type: str) -> str:
    """Why the profiles can differ for this type (ftlab first, then the study): its plugin's note."""
    try:
        return get_type(task_type).profile_note
    except ValidationError:
        return "see docs/EVALUATOR.md"


def profiles_html(store: ObjectStore, evaluations: list[tuple[str, str]]) -> str:
    return "<h2>Scoring profiles: ftlab vs study</h2><pre>" + html.escape(
        profiles_markdown(store, evaluations).split("\n", 3)[-1]) + "</pre>"


def add_profiles_section(store: ObjectStore, evaluations: list[tuple[str, str]], out: Path) -> None:
    """Append the section to ``out/report.md`` and ``out/report.html`` (written just before)."""
    md, page = Path(out) / "report.md", Path(out) / "report.html"
    md.write_text(md.read_text() + profiles_markdown(store, evaluations))
    page.write_text(page.read_text().replace("</body>", profiles_html(store, evaluations) + "</body>"))
