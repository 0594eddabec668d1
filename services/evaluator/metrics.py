"""The ``ftlab`` scoring profile (the corrected definitions), in the study's key names and scales
(``seed/example_metrics_*.json``); ``study.py`` is the study's scorer reproduced exactly.

Each task type's scorer is its plugin's ``score`` (``services/common/data/task_types/<type>.py``:
multiple choice, SQuAD v2, numeric, yes/no, each checked against its reference implementation in
tests/unit/test_scoring.py); this module only dispatches. Inputs are answers already normalised by
``services.common.data.tasks`` (``parse_answer`` for predictions, ``gold_answer`` / ``gold_answers`` for
golds); a ``None`` prediction is a format failure (no ``\\boxed{}`` answer). Every scorer also
returns ``correct`` (one bool per item, for predictions.parquet) and ``format_success_rate``
(percent of predictions that are not None). Pure python + numpy.
"""
from __future__ import annotations


def score(task, preds: list[str | None], golds: list) -> dict:
    """The ``ftlab`` profile's scores of one task (a ``tasks.TaskDef``): preds from
    ``tasks.parse_answer``, golds from ``tasks.gold_answer`` (multi-gold types: ``tasks.gold_answers``)."""
    return task.type.score(preds, golds, task.labels)


def block(task, scores: dict) -> dict:
    """The keys of the task type's ``metrics`` block in metrics.json, from ``score``'s output."""
    return {k: scores[k] for k in task.type.block_keys if k in scores}
