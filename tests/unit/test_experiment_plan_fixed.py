"""The plan of every shipped experiment, and the problems of invalid specs, are those main made at
f2a82ef (``tests/unit/data/experiment_plans_f2a82ef.json``, generated once from that commit with
the same properties this test reads): the typed experiment schema and the split ``plan()`` change
how the plan is built, not what it is. One deliberate change since: phase3 trains with gradient
checkpointing, as the study's measured memory shows it did (docs/TRAINER.md), so its steps' specs
and request ids were taken again from the commit that made that change; and the list of known
top-level keys in one invalid case's message names ``seeds``, ``lr_sweep`` and ``verdicts`` (issue 25). mini-study was
added with issue #25 (generated from i36 merged with i35, which its seeds: key needs), and taken again when it was
sized (16 steps, a sweep on seed 1 only: lr_sweep.seeds), and again after a96934c sized it to 12 steps of 4
(max_steps, train_limit, the PTQ's calibration and report: nothing else differs). Issue #25's like-for-like
evaluations (a model scored again under HF where a model compared with it cannot load in vLLM: labels ``rescore``)
were added to demo, mini-study, phase3 and smoke by regenerating the plans with ``properties`` below (every other
step unchanged), and taken again (demo, phase3, smoke) when they got the dtype the child computes in (``dtype``:
``compute`` for a bitsandbytes child, ``bfloat16`` for QLoRA's). Compared by stable properties: each step's key, service,
spec, inputs, labels and request id (the spec hash), in order; the experiment's datasets, data
section, timeouts and inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows import experiment as E
from services.common.contract.errors import ValidationError

FIXTURE = json.loads((Path(__file__).parent / "data" / "experiment_plans_f2a82ef.json").read_text())


def properties(x: E.Experiment) -> dict:
    return json.loads(json.dumps({
        "name": x.name, "description": x.description, "timeouts_s": x.timeouts_s, "datasets": x.datasets,
        "data": x.data, "inputs": x.inputs,
        "steps": [{"key": s.key, "service": s.service, "after": s.after, "labels": s.labels,
                   "request_id": s.request_id(x.name), "spec": s.spec} for s in x.steps]}, default=str))


def test_the_fixture_covers_every_shipped_experiment():
    assert sorted(FIXTURE["plans"]) == E.shipped_names()


@pytest.mark.parametrize("name", sorted(FIXTURE["plans"]))
def test_shipped_plan_is_unchanged(name):
    want, got = FIXTURE["plans"][name], properties(E.load(name))
    assert [s["key"] for s in got["steps"]] == [s["key"] for s in want["steps"]]
    for g, w in zip(got["steps"], want["steps"]):
        assert g == w, g["key"]
    assert got == want


@pytest.mark.parametrize("case", range(len(FIXTURE["invalid"])))
def test_invalid_specs_report_the_same_problems_at_once(case):
    c = FIXTURE["invalid"][case]
    with pytest.raises(ValidationError) as exc:
        E.plan(c["raw"], "bad.yaml")
    assert exc.value.problems == c["problems"]
