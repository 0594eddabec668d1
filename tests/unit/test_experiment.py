"""Every shipped experiment YAML loads and plans; bad specs report every problem at once."""
from __future__ import annotations

import pytest

from flows.experiment import EXPERIMENTS_DIR, load, plan
from services.common.errors import NotFoundError, ValidationError

SHIPPED = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_experiments_plan(name):
    exp = load(name)
    assert exp.steps and exp.name == name
    assert len({s.key for s in exp.steps}) == len(exp.steps)  # no step twice
    outputs = {s.output for s in exp.steps}
    for s in exp.steps:  # every dependency is an input model or produced by an earlier step
        for dep in s.after:
            assert dep in exp.raw["base_models"] or dep in outputs


def test_smoke_plan_matches_the_study_naming():
    exp = load("smoke")
    assert [s.output for s in exp.stage("train")] == ["Qwen3-tiny-arc_SFT_LoRa8_NoQuant"]
    assert [s.output for s in exp.stage("quantize")] == ["Qwen3-tiny-arc_SFT_LoRa8_Int8_BnB"]
    assert len(exp.stage("evaluate")) == 3


def test_request_ids_are_stable_across_loads():
    a, b = load("smoke"), load("smoke")
    assert [s.request_id("smoke") for s in a.steps] == [s.request_id("smoke") for s in b.steps]


def test_bad_experiment_reports_everything():
    with pytest.raises(ValidationError) as exc:
        plan({"name": "bad name", "base_models": [], "datasets": ["../x"], "train": [{"base_model": "x"}],
              "quantize": {"methods": ["awq9"]}, "evaluate": {}, "colour": "blue"})
    text = str(exc.value)
    for fragment in ["unknown key 'colour'", "name:", "base_models: at least one", "datasets[0]",
                     "train[0]", "awq9", "evaluate.tasks"]:
        assert fragment in text, fragment


def test_unknown_experiment_lists_shipped():
    with pytest.raises(NotFoundError, match="smoke"):
        load("phase9")
