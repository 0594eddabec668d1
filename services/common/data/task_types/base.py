r"""What a task type is: the base class every plugin in this package subclasses, and the small
helpers the plugins share (percentages, F1, the answer unwrapping, the import drop reasons).

A task type is everything that differs between kinds of tasks: the canonical dataset columns, how
a source record becomes a row, how an answer is normalised, the ``ftlab`` scorer and its
bootstrap columns, the study's scorer, and which metrics the report leads with. Mechanism modules
(``tasks.py``, ``data_import.py``, the evaluator's ``metrics.py`` / ``stats.py`` / ``study.py`` /
``score.py`` / ``compare.py``, the flows' tables) call these hooks and never name a type.
Torch-free (numpy only).
"""
from __future__ import annotations

import re
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

# The option letters of a task that sets none (the study's A-D; TaskDef.labels' default).
DEFAULT_LABELS = ("A", "B", "C", "D")

# Why a source record did not become a dataset row (the import manifest counts each kind).
MISSING_FIELD = "missing_field"          # no question / context / gold in the record
NON_NUMERIC_GOLD = "non_numeric_gold"    # math: the expected answer is not a single number
INVALID_GOLD = "invalid_gold"            # multiple choice: the gold is not one of the option labels
DUPLICATE_ID = "duplicate_id"            # the source id repeats an earlier record's
UNUSABLE_GOLD = "unusable_gold"          # a converter refused the record without naming a reason
DROP_REASONS = (MISSING_FIELD, NON_NUMERIC_GOLD, INVALID_GOLD, DUPLICATE_ID, UNUSABLE_GOLD)


class Dropped(Exception):
    """Raised by ``TaskType.import_row`` for a record that cannot become a row; ``reason`` is one
    of DROP_REASONS."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TaskType:
    """One kind of task. Subclass it in ``task_types/<name>.py``; the registry instantiates every
    subclass it finds there once. Class attributes are the type's tables, methods its hooks."""

    name: ClassVar[str]                       # the YAML's ``type:`` and metrics.json's ``type``
    columns: ClassVar[tuple[str, ...]]        # canonical dataset columns (import writes exactly these)
    optional_columns: ClassVar[frozenset[str]] = frozenset()  # readers can do without (older datasets)
    block_keys: ClassVar[tuple[str, ...]]     # the ``ftlab`` metrics block of metrics.json
    ci_metrics: ClassVar[tuple[str, ...]]     # metrics that get a bootstrap CI / a paired comparison
    lead_metrics: ClassVar[tuple[str, ...]]   # what the report's comparison table leads with
    # The task YAML's ``metrics:`` when it has none: (metric, higher_is_better), the first the headline.
    default_metrics: ClassVar[tuple[tuple[str, bool], ...]]
    study_title: ClassVar[str]                # the study scorer's ``metrics.task``
    profile_note: ClassVar[str]               # why the ftlab and study profiles can differ
    gold_kind: ClassVar[str] = "a valid answer"   # what a gold must be (``ftlab score``'s error)
    uses_labels: ClassVar[bool] = False       # the YAML may set ``labels`` (option letters)
    multi_gold: ClassVar[bool] = False        # golds are lists (column ``answers``); [] = no answer
    no_answer_target: ClassVar[str | None] = None   # what the model writes when there is no gold
    leakage_pair: ClassVar[bool] = False      # leakage is keyed on (context, question), not question
    filters: ClassVar[tuple[str, ...]] = ()   # data-recipe filters that apply to this type only
    # Data-recipe ``stratify`` values this type offers: name -> (row -> stratum).
    strata: ClassVar[Mapping[str, Callable[[Mapping[str, Any]], str]]] = {}

    # ---- data: one answer, one record
    def normalise(self, task, value: Any) -> str | None:
        """One answer (gold or parsed) in the type's canonical form, None when it has none."""
        raise NotImplementedError

    def strata_names(self, task, strat: str) -> list[str] | None:
        """The strata of ``strat`` (None: whatever the pool holds)."""
        return None

    def import_row(self, task, rec: Mapping[str, Any]) -> dict | None:
        """One source record (seed row or Hugging Face schema) as a canonical row; raise
        ``Dropped`` (or return None) when it cannot be one."""
        raise NotImplementedError

    # ---- the ftlab profile
    def score(self, preds: list, golds: list, labels: tuple[str, ...]) -> dict:
        """Scores in metrics.json's keys and scales, plus ``correct`` (per item), ``accuracy`` and
        ``format_success_rate`` (``common``). ``labels``: the task's option letters."""
        raise NotImplementedError

    def canonical_gold(self, task, gold: Any) -> Any:
        """A gold as given to ``ftlab score`` (JSONL), in the form ``score`` takes."""
        return self.normalise(task, gold)

    def gold_problem(self, task, gold: Any) -> str | None:
        """Why ``gold`` is not a usable gold of ``task`` (None when it is)."""
        if isinstance(gold, (dict, list)) or gold is None or self.normalise(task, gold) is None:
            return f"gold must be {self.gold_kind_of(task)}, got {gold!r}"
        return None

    def gold_kind_of(self, task) -> str:
        return self.gold_kind

    def item_columns(self, preds: list, golds: list, labels: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Per-item arrays from which every ``ci_metrics`` entry is a reduction; must hold
        ``correct`` (bool); ``parsed_ok`` is added by the caller."""
        raise NotImplementedError

    def resampled(self, cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
        """The type's ``ci_metrics`` beyond accuracy and format success, one value per row of
        ``idx`` (resamples x items); NaN where undefined."""
        return {}

    # ---- the study profile (services/evaluator/study.py)
    def study_prediction(self, boxed: str | None) -> Any:
        """The study's prediction from the first ``\\boxed{`` content (None when unboxed)."""
        return (boxed or "").strip()

    def study_gold(self, gold: Any) -> Any:
        """The study's gold from a dataset answer."""
        return str(gold).strip()

    def study_input_gold(self, task, gold: Any) -> Any:
        """A gold as given to ``ftlab score --profile study`` (JSONL), as ``study_gold`` takes it."""
        return gold

    def study_score(self, golds: list, preds: list) -> tuple[dict, list[bool]]:
        """The study's metrics block (without task/support) and each item's correct flag."""
        raise NotImplementedError

    def study_accuracy(self, block: dict, n_correct: int, n: int) -> float:
        return round(n_correct / n * 100 if n else 0.0, 2)


# ---------------------------------------------------------------------------------------------
# Helpers the plugins share

def pct(num: float, den: int) -> float | None:
    return round(100.0 * num / den, 2) if den else None


def check_lengths(preds: list, golds: list) -> None:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold answers")


def common(correct: list[bool], preds: list) -> dict:
    """accuracy, format_success_rate (percent), support and the per-item ``correct`` of a scorer."""
    n = len(correct)
    return {"accuracy": pct(sum(correct), n), "format_success_rate": pct(sum(p is not None for p in preds), n),
            "support": n, "correct": correct}


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def unwrap(s: str) -> str:
    r"""Drop wrappers around the whole answer: ``$...$``, ``\text{...}``, ``\mathrm{...}``."""
    s = s.strip()
    while True:
        m = re.fullmatch(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{(.*)\}", s, re.S)
        if m and "{" not in m.group(1) and "}" not in m.group(1):
            s = m.group(1).strip()
        elif len(s) >= 2 and s[0] == s[-1] == "$":
            s = s[1:-1].strip()
        else:
            return s


def text(value: Any) -> str:
    """A record field as text ("" for None / NaN)."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)
