"""The evaluation orchestrator's planning (no Prefect start): every committed model lacking an
evaluation for a requested task gets one step, for exactly the tasks it lacks."""
from __future__ import annotations

import pytest

from flows.orchestrator import missing_evaluations, plan_missing
from services.common.contract.errors import ValidationError
from tests.unit.test_aggregate import seed_study


def test_models_lacking_a_task_are_found_and_planned(store, tmp_path):
    seed_study(store, tmp_path)  # 12 models, each evaluated on the three tasks
    assert missing_evaluations(store, ["ai2_arc", "squad"]) == []
    new = tmp_path / "new"
    new.mkdir()
    (new / "config.json").write_text("{}")
    from services.common.storage import artifacts
    artifacts.commit_dir(store, "models", "Qwen3-new-base", new, {"kind": "base"})
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "metrics.json").write_text("{}")
    artifacts.commit_dir(store, "evaluations", "Qwen3-new-base/e0", ev, {"kind": "evaluation", "tasks": ["ai2_arc"]})

    assert missing_evaluations(store, ["arc", "openmath"]) == [("Qwen3-new-base", ["OpenMathInstruct-2"])]
    assert missing_evaluations(store, ["openmath"], pattern="Qwen3-8B-*") == []
    steps = plan_missing(store, ["ai2_arc", "openmath", "squad_v2"], limit=5, batch_size=4)
    assert [s.spec["model"] for s in steps] == ["Qwen3-new-base"]
    spec = steps[0].spec
    assert spec["tasks"] == [{"task": "OpenMathInstruct-2", "limit": 5}, {"task": "squad_v2", "limit": 5}]
    assert spec["batch_size"] == 4 and spec["eval_id"].startswith("evaluate-missing-")
    again = plan_missing(store, ["ai2_arc", "openmath", "squad_v2"], limit=5, batch_size=4)[0]
    assert again.request_id("evaluate-missing") == steps[0].request_id("evaluate-missing")  # idempotent


def test_bad_orchestrator_requests_are_refused(store):
    with pytest.raises(ValidationError, match="hellaswag"):
        plan_missing(store, ["hellaswag"])
    with pytest.raises(ValidationError, match="at least one task"):
        plan_missing(store, [])
    with pytest.raises(ValidationError, match="limit"):
        plan_missing(store, ["ai2_arc"], limit=0)
