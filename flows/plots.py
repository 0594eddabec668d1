"""The report's plots (PNG, matplotlib's Agg backend, no display needed), each from the summary
table alone: score vs training peak memory with the Pareto front, latency per task and model,
LoRA-rank sweeps with CI bands, post-training-quantization size vs score.
A plot without data is not drawn; ``make_plots`` returns the ones it wrote."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from flows.aggregate import task_headlines, train_memory_gb  # noqa: E402
from services.common.contract.naming import without_seed  # noqa: E402

TITLES = {"score_vs_memory": "Score vs training peak memory (Pareto front)",
          "latency": "Mean latency per task and model",
          "rank_sweep": "Score vs adapter rank (95% CI bands)",
          "ptq_size": "Model size vs score (post-training quantization)",
          "loss_curves": "Training loss curves"}


def _tasks(table: pd.DataFrame) -> list[str]:
    return [t for t, (m, _) in task_headlines().items()
            if f"{t}__{m}" in table.columns and table[f"{t}__{m}"].notna().any()]


def _score_label(task: str) -> str:
    metric, higher = task_headlines()[task]
    return f"{task} {metric} ({'higher' if higher else 'lower'} is better)"


def pareto_front(points: list[tuple[float, float]], higher_better: bool) -> list[tuple[float, float]]:
    """The points no other point beats on both memory (lower) and score; sorted by memory."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1] if higher_better else p[1])):
        s = y if higher_better else -y
        if s > best:
            front.append((x, y))
            best = s
    return front


def _grid(n: int, title: str):
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.8), squeeze=False)
    fig.suptitle(title, fontsize=13)
    return fig, axes[0]


def _save(fig, path: Path) -> Path:
    if not fig.legends:  # a figure-level model key sets its own margins
        fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_score_vs_memory(table: pd.DataFrame, path: Path) -> Path | None:
    rows = [(r, *train_memory_gb(r)) for _, r in table.iterrows()]
    rows = [(r, gb, kind) for r, gb, kind in rows if gb is not None]
    tasks = _tasks(table)
    if not rows or not tasks:
        return None
    kind = rows[0][2]
    panels = [(t, *task_headlines()[t]) for t in tasks]
    # Format success too where it varies: for a small model it is what fine-tuning changes first.
    panels += [(t, "format_success_rate", True) for t in tasks if f"{t}__format_success_rate" in table.columns
               and table[f"{t}__format_success_rate"].nunique(dropna=True) > 1]
    names = [r["model"] for r, _, _ in rows]
    fig, axes = _grid(len(panels), TITLES["score_vs_memory"])
    for ax, (task, metric, higher) in zip(axes, panels):
        col = f"{task}__{metric}"
        pts = [(gb, float(r[col]), i) for i, (r, gb, _) in enumerate(rows) if pd.notna(r.get(col))]
        for x, y, i in pts:  # numbered points, names in the legend below: no overlapping labels
            ax.scatter(x, y, s=60, color=_color(i), zorder=3)
            ax.annotate(str(i + 1), (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
        front = pareto_front([(x, y) for x, y, _ in pts], higher)
        if front:
            ax.plot(*zip(*front), "--", color="crimson", label="Pareto front")
            ax.legend(fontsize=8, loc="best")
        ax.set(title=f"{task} {metric}", xlabel=f"training peak memory, GB ({kind})",
               ylabel=f"{metric} ({'higher' if higher else 'lower'} is better)")
        ax.grid(alpha=0.3)
    _model_key(fig, names)
    return _save(fig, path)


def _color(i: int):
    return plt.get_cmap("tab20")(i % 20)


def _model_key(fig, names: list[str], colored: bool = True) -> None:
    """The numbered models as a legend under the panels, in as many columns as fit (``colored``:
    the points are drawn in ``_color(i)``; else the key has plain numbers)."""
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], marker="o" if colored else "", linestyle="", color=_color(i), label=f"{i + 1}  {n}")
               for i, n in enumerate(names)]
    width = fig.get_figwidth()
    ncol = max(1, min(len(names), int(width * 72 / (6.5 * max(len(n) for n in names) + 40))))
    rows = math.ceil(len(names) / ncol)
    key_h = 0.2 * rows + 0.15                       # inches taken by the key
    panels_h = fig.get_figheight()
    fig.set_figheight(panels_h + key_h)
    fig.tight_layout(rect=(0, key_h / (panels_h + key_h), 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))


def plot_loss_curves(store, models: list[str], path: Path) -> Path | None:
    """Training loss per optimizer step of every trained model in the table (training_metadata.json)."""
    from services.common.storage import artifacts
    from services.common.contract.errors import NotFoundError
    curves = {}
    for m in models:
        try:
            meta = artifacts.read_json(store, "models", m, "training_metadata.json")
        except NotFoundError:
            continue
        if meta.get("loss_curve"):
            curves[m] = meta["loss_curve"]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for i, (m, c) in enumerate(curves.items()):
        ax.plot([p["step"] for p in c], [p["loss"] for p in c], "o-", ms=3, color=_color(i), label=m)
    ax.set(title=TITLES["loss_curves"], xlabel="optimizer step", ylabel="training loss (answer tokens, nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1 if len(curves) < 6 else 2,
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_latency(table: pd.DataFrame, path: Path) -> Path | None:
    cols = [c for c in table.columns if c.endswith("__latency_mean_s") and table[c].notna().any()]
    if not cols or table.empty:
        return None
    data = table.set_index("model")[cols].rename(columns=lambda c: c.removesuffix("__latency_mean_s"))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(data) + 3), 4.8 + 0.08 * max(len(m) for m in data.index)))
    data.plot.bar(ax=ax, rot=30)
    ax.set(title=TITLES["latency"], xlabel="model", ylabel="mean latency per item, s")
    plt.setp(ax.get_xticklabels(), ha="right", fontsize=7)
    ax.legend(title="task", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_rank_sweep(table: pd.DataFrame, path: Path) -> Path | None:
    if "rank" not in table.columns:
        return None
    adapters = table[table["rank"].notna()  # every adapter method has a rank (services/trainer/peft/)
                     & (table["ptq_method"].isna() if "ptq_method" in table.columns else True)]
    tasks = _tasks(adapters) if len(adapters) else []
    if not tasks:
        return None
    fig, axes = _grid(len(tasks), TITLES["rank_sweep"])
    for ax, task in zip(axes, tasks):
        metric = task_headlines()[task][0]
        col, lo, hi = f"{task}__{metric}", f"{task}__{metric}__ci95_low", f"{task}__{metric}__ci95_high"
        keys = ["base_model", "train_dataset", "method", "training_quant"]
        for key, g in adapters.groupby([k for k in keys if k in adapters.columns], dropna=False):
            g = g.sort_values("rank")
            label = " / ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)) if pd.notna(k))
            ax.plot(g["rank"], g[col], "o-", label=label)
            if lo in g.columns and g[lo].notna().any():
                ax.fill_between(g["rank"], g[lo], g[hi], alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set(title=task, xlabel="rank r (log2)", ylabel=_score_label(task))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def ptq_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The quantized models and the models they were made from, with a size; a row folding seeds
    names its first seed's source, which the table holds folded too: mapped to that row."""
    models = set(table["model"])
    table = table.assign(parent_model=table["parent_model"].map(
        lambda p: without_seed(p)[0] if isinstance(p, str) and p not in models else p))
    sources = set(table.loc[table["ptq_method"].notna(), "parent_model"])
    rows = table[table["ptq_method"].notna() | table["model"].isin(sources)]
    return rows[rows["model_size_gb"].notna()]


def plot_ptq_size(table: pd.DataFrame, path: Path) -> Path | None:
    if "ptq_method" not in table.columns or table["ptq_method"].isna().all():
        return None
    rows = ptq_rows(table)
    tasks = _tasks(rows) if len(rows) else []
    if not tasks:
        return None
    fig, axes = _grid(len(tasks), TITLES["ptq_size"])
    number = {m: i for i, m in enumerate(rows["model"])}
    for ax, task in zip(axes, tasks):
        col = f"{task}__{task_headlines()[task][0]}"
        for method, g in rows.groupby(rows["ptq_method"].fillna("none (source)")):
            ax.scatter(g["model_size_gb"], g[col], s=45, label=method)
            for _, r in g.iterrows():  # numbered; the names are in the key under the panels
                ax.annotate(str(number[r["model"]] + 1), (r["model_size_gb"], r[col]), fontsize=8, xytext=(4, 4),
                            textcoords="offset points")
        for _, r in rows[rows["ptq_method"].notna()].iterrows():  # arrow: source -> quantized
            src = rows[rows["model"] == r["parent_model"]]
            if len(src) and pd.notna(src.iloc[0][col]) and pd.notna(r[col]):
                ax.annotate("", (r["model_size_gb"], r[col]), (src.iloc[0]["model_size_gb"], src.iloc[0][col]),
                            arrowprops={"arrowstyle": "->", "color": "grey", "alpha": 0.6})
        ax.set(title=task, xlabel="model size on disk, GB", ylabel=_score_label(task))
        ax.legend(title="PTQ method", fontsize=8)
        ax.grid(alpha=0.3)
    _model_key(fig, list(rows["model"]), colored=False)  # colours here are the PTQ methods
    return _save(fig, path)


PLOTS = {"score_vs_memory": plot_score_vs_memory, "latency": plot_latency,
         "rank_sweep": plot_rank_sweep, "ptq_size": plot_ptq_size}


def make_plots(table: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, fn in PLOTS.items():
        p = fn(table, out_dir / f"{name}.png")
        if p is not None:
            written[name] = p
    return written
