"""The run's results in the Prefect UI: the comparison table (each configuration against its
parent, with CI and p-value), the summary table and a link to report.html, as artifacts of the
flow run (prefect.artifacts). Called inside the flow; outside a flow run Prefect keeps them
unattached."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from services.common.data.tasks import list_tasks


def summary_columns() -> list[str]:
    """The summary excerpt's columns: per registered task its format success and its YAML's first two
    metrics (the headline first), between the model's facts and its cost."""
    per_task = [f"{t.name}__{m}" for t in list_tasks()
                for m in dict.fromkeys(["format_success_rate", *(m for m, _ in t.metrics[:2])])]
    return ["model", "method", "rank", "quant_tag", *per_task, "train_peak_rss_gb", "train_peak_vram_reserved_gb",
            "eval_samples_per_s", "model_size_gb"]


def artifact_key(experiment: str, what: str) -> str:
    """Prefect keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{experiment}-{what}".lower()).strip("-")


def publish(experiment: str, run_id: str, report: dict[str, Any]) -> list[str]:
    """Create the artifacts; returns their keys."""
    keys = []
    vs = report.get("comparisons") or []
    if vs:
        key = artifact_key(experiment, "vs-base")
        create_table_artifact(key=key, table=vs, description=(
            f"{experiment} run {run_id}: each model - the model it was made from, on the same held-out items; "
            "95% paired-bootstrap CI, exact McNemar p for right/wrong metrics; clear = CI excludes 0 and p < 0.05"))
        keys.append(key)
        clear = [r for r in vs if r.get("clear")]
        lines = [f"# {experiment} run {run_id}", "", f"{len(clear)} of {len(vs)} differences are statistically clear:", ""]
        lines += [f"- **{r['model']}** vs {r['vs']}: {r['task']} {r['metric']} {r['parent_value']:.4g} -> "
                  f"{r['value']:.4g} (diff {r['diff']:+.4g}, 95% CI [{r['ci95_low']:+.4g}, {r['ci95_high']:+.4g}]"
                  + (f", McNemar p = {r['mcnemar_p']:.2g})" if r.get("mcnemar_p") is not None else ")")
                  for r in clear] or ["- none"]
        key = artifact_key(experiment, "findings")
        create_markdown_artifact(key=key, markdown="\n".join(lines), description=f"{experiment}: what changed")
        keys.append(key)
    table = [{c: r.get(c) for c in summary_columns() if c in r} for r in report.get("table") or []]
    if table:
        key = artifact_key(experiment, "summary")
        create_table_artifact(key=key, table=table, description=f"{experiment} run {run_id}: metrics_summary (excerpt)")
        keys.append(key)
    html = Path(report["local_dir"]) / "report.html"
    key = artifact_key(experiment, "report")
    create_link_artifact(key=key, link=html.resolve().as_uri(), link_text=f"{experiment} report ({run_id})",
                         description=f"report.html; in storage: {report['uri']}report.html")
    keys.append(key)
    return keys
