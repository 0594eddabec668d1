"""The study's findings put to the test: one line per question with the study's finding, ftlab's
estimate with its 95% interval, and a verdict — supported, contradicted, or not decidable at this
scale. An experiment asks for it with ``verdicts: [full_vs_lora, adapters, ptq]`` (the mini-study,
flows/experiments/mini-study.yaml); the report leads with the table.

The rule (``verdict``): a finding predicts the sign of a difference beyond a margin. Supported when
the whole interval lies on the predicted side of the margin, contradicted when it lies wholly on
the other side, not decidable at this scale when it straddles the margin (too few items, seeds or
steps to tell). The intervals are paired ones (``compare_pair``): the same test items and, where a
configuration was trained with several seeds (the summary folds them into one row), the same seeds
— seed i of one side against seed i of the other, a two-level (seeds, then items) bootstrap
(services/evaluator/stats.replicated_paired), so a difference within the seeds' own spread is not
decidable. With one model a side it is the one-seed paired bootstrap.

The questions (the study's wording from its README, ../shared/seed/PROJECT_STRUCTURE.md):
  full_vs_lora  "Full FT on small models > LoRA": full FT minus the *strongest* LoRA rank on test
                (the strongest on test: conservative for the finding), margin 0.
  adapters      "VeRA for strict caps; LoRA/DoRA when feasible": the better of LoRA and DoRA minus
                VeRA (margin 0), with each one's training peak memory (the "caps" half).
  ptq           "PTQ is last resort (catastrophic for fine-tuned numeracy)": each PTQ of the (best
                quantized) fine-tune minus that fine-tune; "catastrophic" taken as giving back at least half of
                what fine-tuning gained over the base (margin -gain/2). One line per method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from services.common.contract.naming import without_seed

QUESTIONS = {
    "full_vs_lora": "Full FT on small models beats LoRA in-domain",
    "adapters": "VeRA for strict memory caps; LoRA/DoRA when feasible (they score higher)",
    "ptq": "PTQ is a last resort: catastrophic for fine-tuned models",
}
SUPPORTED, CONTRADICTED, UNDECIDED = "supported", "contradicted", "not decidable at this scale"
Pair = Callable[[str, str], "tuple[float, float, float] | None"]  # (a, b) -> (b - a, ci low, ci high)


@dataclass(frozen=True)
class Line:
    question: str
    finding: str
    estimate: str          # what was measured, in words
    diff: float | None
    ci: tuple[float, float] | None
    margin: float
    verdict: str
    note: str = ""


def parse(raw: Any, p: list[str]) -> list[str]:
    """``verdicts:``: a list of question keys (problems appended to ``p``)."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not raw:
        p.append(f"verdicts: a list of study questions ({', '.join(QUESTIONS)})")
        return []
    p += [f"verdicts: unknown question {q!r} (known: {', '.join(QUESTIONS)})" for q in raw if q not in QUESTIONS]
    return [q for q in raw if q in QUESTIONS]


def verdict(lo: float, hi: float, expect: int, margin: float = 0.0) -> str:
    """The finding predicts ``expect * (diff - margin) > 0``; the interval [lo, hi] decides."""
    if expect > 0:
        return SUPPORTED if lo > margin else CONTRADICTED if hi < margin else UNDECIDED
    return SUPPORTED if hi < margin else CONTRADICTED if lo > margin else UNDECIDED


def _line(q: str, estimate: str, pair: Pair, a: str, b: str, expect: int, margin: float = 0.0, note: str = "") -> Line:
    got = pair(a, b)
    if got is None or isinstance(got, str):  # str: why the pair cannot be compared
        why = got or f"no paired evaluation of {a} and {b}"
        return Line(q, QUESTIONS[q], estimate, None, None, margin, UNDECIDED, why)
    d, lo, hi = got
    return Line(q, QUESTIONS[q], estimate, d, (lo, hi), margin, verdict(lo, hi, expect, margin), note)


def lines(questions: list[str], table: pd.DataFrame, metric: str, pair: Pair) -> list[Line]:
    """One line per question (PTQ: per method) from the summary table (one row per model: model,
    method, rank, ptq_method, parent_model, ``metric``, train_peak_rss_gb)."""
    t = table.dropna(subset=[metric]) if metric in table else table.iloc[0:0]
    trained = t[t.method.isin(["lora", "dora", "vera", "full"]) & t.ptq_method.isna()]
    out: list[Line] = []

    def best(methods: list[str]) -> pd.Series | None:
        rows = trained[trained.method.isin(methods)]
        return None if rows.empty else rows.loc[rows[metric].idxmax()]

    def missing(q: str, what: str) -> Line:
        return Line(q, QUESTIONS[q], what, None, None, 0.0, UNDECIDED, f"not in this run: {what}")

    for q in questions:
        if q == "full_vs_lora":
            full, lora = best(["full"]), best(["lora"])
            if full is None or lora is None:
                out.append(missing(q, "a full fine-tune and a LoRA model"))
                continue
            out.append(_line(q, f"{metric}: full FT − LoRA r{int(lora['rank'])} (the strongest rank)",
                             pair, lora.model, full.model, +1))
        elif q == "adapters":
            vera, ld = best(["vera"]), best(["lora", "dora"])
            if vera is None or ld is None:
                out.append(missing(q, "a VeRA and a LoRA or DoRA model"))
                continue
            gb = [r.get("train_peak_rss_gb") for r in (ld, vera)]
            mem = ("train peak RSS " + " vs ".join(f"{v:.2f} GB ({m})" for v, m in zip(gb, (ld.method, "vera")))
                   if all(isinstance(v, (int, float)) and v == v for v in gb) else "")
            out.append(_line(q, f"{metric}: {ld.method} − VeRA", pair, vera.model, ld.model, +1, note=mem))
        elif q == "ptq":
            quantized = t[t.ptq_method.notna()]  # the plan quantizes the fine-tune it names; the best of them
            # a folded row's parent is its first seed's model: the parent's configuration is the row's
            quantized = quantized.assign(parent_model=[without_seed(m)[0] if isinstance(m, str) else m
                                                       for m in quantized.parent_model])
            ft = trained[trained.model.isin(quantized.parent_model)]
            ft = None if ft.empty else ft.loc[ft[metric].idxmax()]
            quant = quantized[quantized.parent_model == (ft.model if ft is not None else None)]
            base = t[t.method == "base"]
            if ft is None or quant.empty:
                out.append(missing(q, "post-training quantizations of the best fine-tune"))
                continue
            gain = float(ft[metric] - base[metric].iloc[0]) if not base.empty else 0.0
            for _, qrow in quant.iterrows():
                out.append(_line(q, f"{metric}: {qrow.ptq_method} − its source {ft.model}", pair, ft.model,
                                 qrow.model, -1, margin=-gain / 2,
                                 note=f"catastrophic = losing half the fine-tune's gain over the base ({gain:+.3g})"))
    return out


def markdown(rows: list[Line]) -> list[str]:
    if not rows:
        return []
    md = ["## The study's findings, tested", "",
          "Each finding predicts the sign of a difference beyond a margin; the verdict is *supported* when the "
          "whole 95% interval is on that side, *contradicted* when it is wholly on the other, otherwise *not "
          "decidable at this scale*. Each difference is paired on the same test items and, where the "
          "configurations were trained with several seeds, on the seeds (seed i against seed i; a two-level "
          "interval, so seed-to-seed spread counts).", "",
          "| question | the study's finding | ftlab's estimate | 95% CI | margin | verdict | note |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        est = "—" if r.diff is None else f"{r.estimate}: {r.diff:+.3g}"
        ci = "—" if r.ci is None else f"[{r.ci[0]:+.3g}, {r.ci[1]:+.3g}]"
        md.append(f"| {r.question} | {r.finding} | {est} | {ci} | {r.margin:+.3g} | **{r.verdict}** | {r.note} |")
    return md + [""]


def compare_pair(store, evaluations: dict[str, str] | list[tuple[str, str]], task: str, metric: str,
                 n_resamples: int = 1000) -> Pair:
    """``pair`` from committed evaluations, between configurations (the summary's rows: a
    configuration's seeds are folded into one, naming.without_seed): B - A paired on items and seeds
    (flows/comparisons.paired_on_seeds: seed i of A with seed i of B, on the seeds both have; a side
    with one model is the same for every seed), the interval two-level (seeds, then items). With one
    model a side it is the one-seed paired bootstrap. Both sides scored alike (engine, dtype,
    generation settings: flows/comparisons.scored_alike): a model's own evaluation (the first listed)
    or, where the sides' differ, the like-for-like evaluation the run (or storage) holds; without
    one the pair is not decided."""
    from services.common.contract.errors import NotFoundError, ValidationError
    from services.evaluator.compare import load_eval
    from flows.comparisons import (_label, _metrics, by_model, configurations, paired_on_seeds, scored_alike, scoring,
                                   seed_sides)
    runs = by_model(list(evaluations.items()) if isinstance(evaluations, dict) else evaluations)
    members = configurations({m: ids[0] for m, ids in runs.items()})

    def pair(a: str, b: str):
        sides = seed_sides(members.get(a, []), members.get(b, []))
        if sides is None:
            return None
        try:
            picked = scored_alike(store, sides[0] + sides[1], runs)
            if picked is None:  # a verdict on the engine, not the models
                scored = sorted({_label(scoring(_metrics(store, m, runs[m][0]))) for m in sides[0] + sides[1]})
                return (f"NOT like for like ({' vs '.join(scored)}), and no evaluations of both scored alike are in "
                        "this run or in storage: not decided; score both the same way")
            side_a, side_b = ([load_eval(store, f"{m}/{picked[m]}") for m in side] for side in sides)
            got = paired_on_seeds(side_a, side_b, task, n_resamples)
        except (NotFoundError, ValidationError, KeyError, ValueError):
            return None
        r = got[0].get(metric) if got else None
        return None if not r or r["mean"] is None or not r["ci95"] else (r["mean"], *r["ci95"])
    return pair


def section(store, spec: dict[str, Any], table: pd.DataFrame, evaluations: list[tuple[str, str]]) -> list[str]:
    """The report's leading section for an experiment with ``verdicts:`` (empty otherwise)."""
    questions = parse(spec.get("verdicts"), [])
    if not questions or table.empty:
        return []
    from services.common.data.tasks import get_task
    task = get_task(spec["evaluate"]["tasks"][0]["task"] if isinstance(spec["evaluate"]["tasks"][0], dict)
                    else spec["evaluate"]["tasks"][0])
    metric = task.headline[0]
    return markdown(lines(questions, table, f"{task.name}__{metric}",
                          compare_pair(store, evaluations, task.name, metric)))
