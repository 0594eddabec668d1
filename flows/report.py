"""A run's report: metrics_summary.csv, the plots, report.md and report.html (tables, plots,
failures, the commands to reproduce), plus steps.json and run.json, committed under
``reports/<experiment>/<run>/`` (manifest last) and copied to a local folder.
``rebuild_report`` makes the same files again from storage alone (``ftlab report``)."""
from __future__ import annotations

import html
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from flows.aggregate import configuration_table, summary_table, task_headlines
from flows.comparisons import between_configurations, between_markdown, vs_parent_table
from flows.plots import TITLES, make_plots, plot_loss_curves
from flows.report_ptq import degradation_table, markdown_section
from flows import report_verdicts
from flows.selection import report_lines as selection_lines
from services.common.storage import artifacts
from services.common.contract.errors import NotFoundError
from services.common.storage.store import ObjectStore
from services.common.data.tasks import list_tasks

NOT_DONE = ("failed", "blocked", "cancelled")
# The columns shown in the report's summary table (all of them are in the CSV): these, with each
# task's first two metrics (its YAML's ``metrics``: the headline, then the next) after quant_tag.
SHOWN_MODEL = ["model", "method", "rank", "quant_tag"]
SHOWN_COST = ["train_peak_vram_reserved_gb", "train_peak_rss_gb", "train_dtype", "eval_tokens_per_s", "eval_engine",
              "model_size_gb"]


@dataclass
class RunInfo:
    experiment: str
    run_id: str
    source: str = ""
    description: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    spec: dict[str, Any] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)   # to reproduce; default: ftlab run <experiment>


def evaluations_of(steps: list[dict[str, Any]], rescored: bool = False) -> list[tuple[str, str]]:
    """(model, eval_id) of every evaluation step whose result exists; model selection's validation
    evaluations (flows/selection.py) are in their own section, not the test results. A model scored
    again under another engine for a like-for-like comparison (label ``rescore``) is not a result
    of its own: listed, after every model's own, only with ``rescored`` (for the comparisons)."""
    done = [s for s in steps if s["stage"] == "evaluate" and s["status"] in ("succeeded", "skipped")
            and s.get("labels", {}).get("split") != "validation"]
    return ([tuple(s["output"].rsplit("/", 1)) for s in done if not s.get("labels", {}).get("rescore")]
            + [tuple(s["output"].rsplit("/", 1)) for s in done if rescored and s.get("labels", {}).get("rescore")])


def shown_columns(table: pd.DataFrame) -> list[str]:
    """With seeds (``n_seeds`` > 1 somewhere), each shown metric is followed by its across-seed sd."""
    seeds = "n_seeds" in table.columns and (table["n_seeds"] > 1).any()
    metrics = [c for t in list_tasks() for m, _ in t.metrics[:2]
               for c in ([f"{t.name}__{m}", f"{t.name}__{m}__sd_seeds"] if seeds else [f"{t.name}__{m}"])]
    shown = SHOWN_MODEL + (["n_seeds"] if seeds else []) + metrics + SHOWN_COST
    return [c for c in shown if c in table.columns and (c == "model" or table[c].notna().any())]


def _reproduce(info: RunInfo) -> list[str]:
    if info.commands:
        return info.commands + [f"ftlab report {info.experiment} --run {info.run_id}   # rebuild this report"]
    target = info.experiment if not info.source or "/flows/experiments/" in info.source else info.source
    return [f"ftlab run {target} --dry-run   # the plan, what is done", f"ftlab run {target}",
            f"ftlab report {info.experiment} --run {info.run_id}   # rebuild this report from storage"]


def _md_table(df: pd.DataFrame) -> str:
    return df.astype(object).where(df.notna(), None).to_markdown(index=False, floatfmt=".4g", missingval="")


def _lead_md(vs: pd.DataFrame | None) -> list[str]:
    """What was learned: each configuration against the model it was made from (flows/comparisons.py)."""
    if vs is None or vs.empty:
        return []
    from flows.comparisons import lead_table
    n_clear = int(vs["clear"].sum())
    return ["## What changed against the base", "",
            f"{n_clear} of {len(vs)} differences are statistically clear (95% paired-bootstrap CI excludes 0, "
            "McNemar p < 0.05 where the metric is per-item right/wrong). Paired on the same held-out items; "
            "`ftlab compare` gives each one in full; all rows are in `comparisons.csv`.", "",
            *_seed_and_engine_notes(vs), _md_table(lead_table(vs)), ""]


def _seed_and_engine_notes(vs: pd.DataFrame) -> list[str]:
    """Plain words for the rows that need them: seeds, seed noise, scoring that differs."""
    out = []
    if "n_seeds" in vs.columns and (vs.n_seeds > 1).any():
        noise = vs[vs.within_seed_noise.astype(bool)]
        out.append(f"Rows with several seeds pair items and seeds: the difference is the mean over seeds, its CI "
                   f"two-level (seeds, then items). {len(noise)} of them are **within seed noise** (the CI includes 0 "
                   "and the difference is no larger than its sd across seeds: other seeds could reverse it)"
                   + (": " + ", ".join(sorted({f"{m} {t} {x}" for m, t, x in zip(noise.model, noise.task, noise.metric)}))
                      if len(noise) else "") + ".")
    if "like_for_like" in vs.columns and (~vs.like_for_like.astype(bool)).any():
        bad = vs[~vs.like_for_like.astype(bool)]
        out.append(f"**{len(bad)} rows are not like for like** (model and parent scored with different engine, dtype "
                   "or generation settings; never called clear): " + "; ".join(sorted(set(bad.note))) + ".")
    return [x for line in out for x in (line, "")]


def _lead_html(vs: pd.DataFrame | None) -> list[str]:
    if vs is None or vs.empty:
        return []
    from flows.comparisons import lead_table
    n_clear = int(vs["clear"].sum())
    t = lead_table(vs)
    body = t.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="", escape=True)
    body = body.replace("<td>yes</td>", "<td class='clear'>yes</td>")
    return ["<h2>What changed against the base</h2>",
            f"<p><b>{n_clear} of {len(vs)}</b> differences are statistically clear (95% paired-bootstrap CI "
            "excludes 0, McNemar p &lt; 0.05 where the metric is per-item right/wrong), paired on the same "
            "held-out items. All rows: <a href='comparisons.csv'>comparisons.csv</a>; one pair in full: "
            "<code>ftlab compare PARENT/EVAL MODEL/EVAL</code>.</p>",
            *[f"<p>{html.escape(x.replace('**', ''))}</p>" for x in _seed_and_engine_notes(vs) if x], body]


def _markdown(info: RunInfo, table: pd.DataFrame, steps: list[dict], plots: dict[str, Path],
              vs: pd.DataFrame | None = None, verdicts: list[str] = (), between: list[str] = ()) -> str:
    bad = [s for s in steps if s["status"] in NOT_DONE]
    counts = pd.Series([s["status"] for s in steps]).value_counts().to_dict() if steps else {}
    lines = [f"# {info.experiment} — run {info.run_id}", "", info.description, "",
             f"- steps: {len(steps)} ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))})",
             f"- wall time: {info.finished_at - info.started_at:.0f} s" if info.finished_at else "",
             f"- models in the table: {len(table)}", "", *verdicts, *_lead_md(vs), *between, "## Summary", "",
             "Headline metrics (each task's YAML; the study's where it had the task): " + ", ".join(
                 f"{t} {m} ({'higher' if h else 'lower'} is better)" for t, (m, h) in task_headlines().items()
                 if f"{t}__{m}" in table.columns and table[f"{t}__{m}"].notna().any()) + ". Every column is in `metrics_summary.csv` (the study's "
             "columns first).", "",
             _md_table(table[shown_columns(table)]) if len(table) else "(no evaluations)",
             "", *selection_lines(steps), "## Plots", ""]
    lines += [f"### {TITLES[n]}\n\n![{TITLES[n]}]({p.name})\n" for n, p in plots.items()] or ["(no data to plot)"]
    lines += ["", f"## Failures ({len(bad)})", ""]
    lines += [f"- `{s['key']}` ({s['status']}): {s.get('error', '')}" for s in bad] or ["none"]
    reruns = [f"- `{s['key']}`: {s['rerun']}" for s in steps if s.get("rerun")]  # and why
    lines += (["", "## Re-run steps", ""] + reruns) if reruns else []
    lines += ["", "## Steps", "", "| step | status | job | wall s |", "|---|---|---|---|"]
    lines += [f"| {s['key']} | {s['status']} | {s.get('job_id', '')} | {s.get('wall_s', '')} |" for s in steps]
    lines += ["", "## Reproduce", "", "```"] + _reproduce(info) + ["```", ""]
    return "\n".join(lines)


def _md_html(lines: list[str]) -> list[str]:
    """A markdown section of headings, paragraphs and one pipe table (verdicts, selection) as HTML."""
    e, out, rows = html.escape, [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                rows.append("<tr>" + "".join(f"<td style='text-align:left'>{e(c.strip()).replace('**', '')}</td>"
                                             for c in line.strip("|").split(" | ")) + "</tr>")
            continue
        if rows:
            out, rows = out + ["<table>", *rows, "</table>"], []
        if line.startswith("## "):
            out.append(f"<h2>{e(line[3:])}</h2>")
        elif line:
            out.append(f"<p>{e(line)}</p>")
    return out


def _html(info: RunInfo, table: pd.DataFrame, steps: list[dict], plots: dict[str, Path],
          vs: pd.DataFrame | None = None, verdicts: list[str] = (), between: list[str] = ()) -> str:
    e = html.escape
    bad = [s for s in steps if s["status"] in NOT_DONE]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(info.experiment)} {e(info.run_id)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
             "th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}.failed{color:#b00}"
             "td.clear{background:#dfd;font-weight:bold}</style></head><body>",
             f"<h1>{e(info.experiment)} — run {e(info.run_id)}</h1><p>{e(info.description)}</p>",
             f"<p>{len(steps)} steps, {len(bad)} not done; {len(table)} models. "
             "The full table is in <a href='metrics_summary.csv'>metrics_summary.csv</a>.</p>",
             *_md_html(list(verdicts)), *_lead_html(vs), *_md_html(list(between)), "<h2>Summary</h2>",
             table[shown_columns(table)].to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="")
             if len(table) else "<p>(no evaluations)</p>", *_md_html(selection_lines(steps)), "<h2>Plots</h2>"]
    parts += [f"<h3>{e(TITLES[n])}</h3><img src='{e(p.name)}' alt='{e(TITLES[n])}'>" for n, p in plots.items()]
    parts += [f"<h2>Failures ({len(bad)})</h2><ul>"]
    parts += [f"<li class='failed'><code>{e(s['key'])}</code> ({e(s['status'])}): {e(str(s.get('error', '')))}</li>"
              for s in bad] or ["<li>none</li>"]
    reruns = [f"<li><code>{e(s['key'])}</code>: {e(s['rerun'])}</li>" for s in steps if s.get("rerun")]
    parts += (["</ul><h2>Re-run steps</h2><ul>"] + reruns) if reruns else []
    parts += ["</ul><h2>Steps</h2><table><tr><th>step</th><th>status</th><th>job</th><th>wall s</th></tr>"]
    parts += [f"<tr><td style='text-align:left'>{e(s['key'])}</td><td>{e(s['status'])}</td>"
              f"<td>{e(str(s.get('job_id', '')))}</td><td>{e(str(s.get('wall_s', '')))}</td></tr>" for s in steps]
    parts += ["</table><h2>Reproduce</h2><pre>" + e("\n".join(_reproduce(info))) + "</pre></body></html>"]
    return "\n".join(parts)


def build_report(store: ObjectStore, info: RunInfo, steps: list[dict[str, Any]],
                 local_dir: str | Path) -> dict[str, Any]:
    """Write every report file to ``local_dir`` and commit them to the reports bucket."""
    out = Path(local_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # a rebuild must not keep plots that no longer have data
        old.unlink()
    by_model = summary_table(store, evaluations_of(steps))
    table = configuration_table(store, by_model)  # a configuration's seeds folded into one row
    table.to_csv(out / "metrics_summary.csv", index=False)
    if len(table) < len(by_model):
        by_model.to_csv(out / "metrics_by_seed.csv", index=False)  # every seed's model, as evaluated
    vs = vs_parent_table(store, evaluations_of(steps, rescored=True))
    vs.to_csv(out / "comparisons.csv", index=False)
    pairs = between_configurations(store, evaluations_of(steps, rescored=True))  # LoRA vs DoRA, full vs LoRA, ... on seeds
    if not pairs.empty:
        pairs.to_csv(out / "configuration_comparisons.csv", index=False)
    plots = make_plots(table, out)
    if (p := plot_loss_curves(store, list(table["model"]) if len(table) else [], out / "loss_curves.png")):
        plots["loss_curves"] = p
    ptq = degradation_table(store, sorted({s["output"] for s in steps if s["stage"] == "quantize"
                                           and s["status"] in ("succeeded", "skipped")}))
    if not ptq.empty:
        ptq.to_csv(out / "ptq_degradation.csv", index=False)
    verdicts = report_verdicts.section(store, info.spec, table, evaluations_of(steps, rescored=True))  # spec's verdicts:
    between = between_markdown(pairs)
    (out / "report.md").write_text(_markdown(info, table, steps, plots, vs, verdicts, between)
                                   + "\n".join(markdown_section(ptq)))
    (out / "report.html").write_text(_html(info, table, steps, plots, vs, verdicts, between))
    (out / "steps.json").write_text(json.dumps(steps, indent=2, default=str))
    (out / "run.json").write_text(json.dumps(asdict(info), indent=2, default=str))
    from flows.report_profiles import add_profiles_section  # the ftlab vs study scoring section
    add_profiles_section(store, evaluations_of(steps), out)
    manifest = artifacts.commit_dir(store, "reports", f"{info.experiment}/{info.run_id}", out, {
        "kind": "report", "experiment": info.experiment, "run_id": info.run_id,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, overwrite=True)
    return {"uri": manifest["uri"], "local_dir": str(out.resolve()), "plots": sorted(plots),
            "table": records(table), "comparisons": records(vs)}


def latest_run(store: ObjectStore, experiment: str) -> str:
    runs = [p.split("/", 1)[1] for p in artifacts.list_committed(store, "reports", f"{experiment}/")]
    if not runs:
        raise NotFoundError(f"no report of experiment {experiment!r} in storage (run it with `ftlab run {experiment}`)")
    return sorted(runs)[-1]


def rebuild_report(store: ObjectStore, experiment: str, run_id: str | None, local_root: str | Path) -> dict[str, Any]:
    """The report of a past run again, from storage alone (its steps.json and run.json, the
    evaluations and model manifests): picks up evaluations that were added or re-run since."""
    run_id = run_id or latest_run(store, experiment)
    prefix = f"{experiment}/{run_id}"
    if artifacts.read_manifest(store, "reports", prefix) is None:
        known = ", ".join(p.split("/", 1)[1] for p in artifacts.list_committed(store, "reports", f"{experiment}/"))
        raise NotFoundError(f"no report {experiment}/{run_id} in storage; runs: {known or 'none'}")
    steps = artifacts.read_json(store, "reports", prefix, "steps.json")  # sha256-checked, like every read
    info = RunInfo(**artifacts.read_json(store, "reports", prefix, "run.json"))
    return build_report(store, info, steps, Path(local_root) / experiment / run_id)


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """``df``'s rows as JSON-able dicts, NaN as None, floats at full precision (pandas' ``to_json``
    keeps 10 decimals, which printed a McNemar p of 1.8e-12 as 0)."""
    rows = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    return json.loads(json.dumps(rows, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
