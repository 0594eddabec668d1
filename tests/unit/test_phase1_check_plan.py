"""The long Phase-1 check (bench/phase1_check.py, `make load-check`) runs phase1.yaml's shape with each
step's work scaled down: the same steps (stages, configurations, dependencies) on its stand-in bases,
never fewer, whatever phase1.yaml becomes."""
from __future__ import annotations

import yaml

from bench.phase1_check import EVAL_WORK, STEP_WORK, plan
from flows.experiment import load


def _shape(exp, bases):
    rename = dict(zip(bases, ("B0", "B1")))
    stems = {b.removesuffix("-base"): rename[b].removesuffix("-base") for b in bases}

    def neutral(text: str) -> str:
        for old, new in [*rename.items(), *stems.items()]:
            text = text.replace(old, new)
        return text
    return sorted((s.stage, neutral(s.output.split("/")[0]), tuple(sorted(neutral(a) for a in s.after)))
                  for s in exp.steps)


def test_the_check_runs_every_step_of_phase1_with_each_steps_work_scaled_down(tmp_path):
    real = load("phase1")
    bases = ["Qwen3-tinya-base", "Qwen3-tinyb-base"]
    f = tmp_path / "shape.yaml"
    f.write_text(yaml.safe_dump(plan("phase1-shape", bases)))
    check = load(str(f))
    assert len(check.steps) == len(real.steps) == 86
    assert _shape(check, bases) == _shape(real, real.raw["base_models"])
    for step in check.stage("train"):
        assert {k: step.spec[k] for k in STEP_WORK} == STEP_WORK
    for step in check.stage("evaluate"):
        assert step.spec["max_new_tokens"] == EVAL_WORK["max_new_tokens"]
        assert {t["limit"] for t in step.spec["tasks"]} == {EVAL_WORK["limit"]}


def test_the_check_passes_a_run_only_when_every_step_succeeded():
    from bench.phase1_check import all_succeeded
    assert all_succeeded("steps: 3 skipped, 86 succeeded")  # the datasets were in storage already
    assert not all_succeeded("steps: 1 blocked, 1 failed, 84 succeeded")
    assert not all_succeeded("steps: 85 succeeded")
    assert not all_succeeded(None)  # the run printed no summary
