r"""The ``study`` scoring profile: the original study's scorer (``Testing/02_TestModels.py`` of
albrp97/LLM-Training) reproduced exactly, quirks included, so that a number scored here can be
put next to a number from the study's table. Written from its definitions, not copied.

The quirks, each with a parity test in tests/unit/test_scoring.py:

- the answer is the FIRST ``\boxed{`` up to the FIRST ``}`` (nested braces cut it short);
- ARC: upper-cased; a longer answer takes its first A-D character (so "Option C" gives "C" but
  "the answer is C" gives "A", from "ANSWER"); digits give no answer; macro-F1 over A-D counts
  only items whose gold AND prediction are A-D;
- BoolQ: true/t/yes/y/1 and false/f/no/n/0; a missing answer counts as the wrong class;
- SQuAD v2: an unboxed answer is an empty prediction, i.e. an abstention; answerable vs not is
  decided by the empty-like set (after SQuAD normalisation: "n/a" becomes "na", which is NOT in
  the set); the gold is the first gold answer only (the study's data kept ``texts[0]``);
- OpenMath: plain ``float()`` of the boxed text and of the gold; correct iff |difference| < 1e-4;
  ``avg_abs_diff`` is the mean over predictions that converted (the study divides by zero when
  answers were boxed but none converted; here it is None);
- latency / token statistics: sample standard deviation, the mode of latencies rounded to 3
  decimals (the first-seen value among ties).

Each type's part (its parser after ``first_boxed``, its gold, its metrics block) is the plugin's
``study_*`` hooks (``services/common/data/task_types/<type>.py``); this module is the shared frame:
the first box, the accuracy / correct / incorrect counts, latency and token statistics.
Pure python: imported by the evaluator's recipe and by ``ftlab score`` (no torch).
"""
from __future__ import annotations

import re
import statistics
from typing import Any

from services.common.data.task_types import TaskType, get_type

SOURCE = "albrp97/LLM-Training Testing/02_TestModels.py (compute_metrics, calculate_latency_metrics)"

_FIRST_BOX = re.compile(r"\\boxed\{\s*(.*?)\s*\}", re.DOTALL)


# ---------------------------------------------------------------------------------------------
# Parsing

def first_boxed(text: Any) -> str | None:
    r"""Content of the first ``\boxed{`` up to the first ``}``, stripped; None if there is none."""
    if not isinstance(text, str):
        return None
    m = _FIRST_BOX.search(text)
    return m.group(1).strip() if m else None


def gold_value(task_type: str | TaskType, gold: Any) -> Any:
    """The study's gold from a dataset answer (the type's ``study_gold``: ARC ``arc_option(str(gold))``,
    BoolQ ``str(gold).strip().lower() == "true"``, SQuAD the first gold string as is, OpenMath
    ``str(gold).strip()``)."""
    return get_type(task_type).study_gold(gold)


def prediction(task_type: str | TaskType, output: str) -> Any:
    """The study's prediction from a raw model output (ARC letter / bool / text; None or "")."""
    return get_type(task_type).study_prediction(first_boxed(output))


# ---------------------------------------------------------------------------------------------
# Metrics (the study's compute_metrics): returns the block and each item's correct flag

def compute_metrics(task_type: str | TaskType, golds: list, preds: list) -> tuple[dict, list[bool]]:
    """The study's ``correct`` / ``incorrect`` / ``accuracy`` (percent, 2 decimals) / ``metrics``
    block for golds and predictions in the study's form (``gold_value``, ``prediction``), and
    each item's correct flag (SQuAD: EM), from the type's ``study_score``."""
    if len(golds) != len(preds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold answers")
    ttype = get_type(task_type)
    block, correct = ttype.study_score(golds, preds)
    n, n_ok = len(golds), sum(correct)
    return {"correct": n_ok, "incorrect": n - n_ok, "accuracy": ttype.study_accuracy(block, n_ok, n),
            "metrics": {"task": ttype.study_title, **block, "support": n}}, correct


# ---------------------------------------------------------------------------------------------
# Cost statistics (the study's calculate_latency_metrics / calculate_token_metrics)

def _first_mode(values: list) -> Any:
    return statistics.mode(values) if values else None  # the first of tied modes (Python >= 3.8)


def latency_stats(latencies: list[float]) -> dict[str, Any]:
    """Seconds: per_prompt/sum/mean/median/std rounded to 4 decimals, std the SAMPLE standard
    deviation (0.0 for one value), mode over latencies rounded to 3 decimals."""
    if not latencies:
        return {"sum": 0, "mean": 0, "median": 0, "mode": None, "std": 0}
    total = float(sum(latencies))
    return {"per_prompt": [round(x, 4) for x in latencies], "sum": round(total, 4),
            "mean": round(total / len(latencies), 4), "median": round(statistics.median(latencies), 4),
            "mode": _first_mode([round(x, 3) for x in latencies]),
            "std": round(statistics.stdev(latencies), 4) if len(latencies) > 1 else 0.0}


def token_stats(tokens: list[int]) -> dict[str, Any]:
    """Token counts: sum (int), mean/median/std (sample) rounded to 2 decimals, mode of the counts."""
    if not tokens:
        return {"sum": 0, "mean": 0, "median": 0, "mode": None, "std": 0}
    total = int(sum(tokens))
    return {"per_prompt": list(tokens), "sum": total, "mean": round(total / len(tokens), 2),
            "median": round(statistics.median(tokens), 2), "mode": _first_mode(list(tokens)),
            "std": round(statistics.stdev(tokens), 2) if len(tokens) > 1 else 0.0}


# ---------------------------------------------------------------------------------------------
# One task, from raw outputs

def score_outputs(task_type: str | TaskType, outputs: list[str | None], golds: list) -> dict[str, Any]:
    """The study's scores of raw model outputs: ``total_samples``, ``format_success_rate`` (percent
    with a first ``\\boxed{}``), ``correct``, ``incorrect``, ``accuracy``, ``metrics``, plus
    ``items`` ([{"parsed", "correct"}]: ``parsed`` the study's prediction, None when unboxed).
    ``golds``: dataset answers (SQuAD: the first gold string, "" when unanswerable)."""
    preds = [prediction(task_type, o) for o in outputs]
    study_golds = [gold_value(task_type, g) for g in golds]
    res, correct = compute_metrics(task_type, study_golds, preds)
    n = len(outputs)
    boxed = [first_boxed(o) for o in outputs]
    parsed = [None if b is None else p for b, p in zip(boxed, preds)]
    return {"type": get_type(task_type).name, "total_samples": n,
            "format_success_rate": round(sum(b is not None for b in boxed) / n * 100 if n else 0.0, 2),
            "correct": res["correct"], "incorrect": res["incorrect"], "accuracy": res["accuracy"],
            "metrics": res["metrics"],
            "items": [{"parsed": p, "correct": bool(c)} for p, c in zip(parsed, correct)]}


def dataset_block(task_type: str | TaskType, outputs: list[str], golds: list, latencies: list[float],
                  tokens: list[int]) -> dict[str, Any]:
    """A task's block in the study's metrics.json layout, scored the study's way."""
    out = score_outputs(task_type, outputs, golds)
    out.pop("items")
    return out | {"latency_seconds": latency_stats(latencies), "tokens_generated": token_stats(tokens)}


def summary(blocks: dict[str, dict], latencies: list[float], tokens: list[int]) -> dict[str, Any]:
    """The study's ``summary`` over every task."""
    n = sum(b["total_samples"] for b in blocks.values())
    ok = sum(b["correct"] for b in blocks.values())
    return {"num_datasets": len(blocks), "total_samples": n, "total_correct": ok,
            "total_incorrect": sum(b["incorrect"] for b in blocks.values()),
            "overall_accuracy": round(ok / n * 100 if n else 0.0, 2),
            "latency_seconds": latency_stats(latencies), "tokens_generated": token_stats(tokens)}
