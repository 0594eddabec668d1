"""Tracking's settings and names, without a server: which experiment a job goes to, how a config
becomes params, the embedded stack's default store, and a service refusing a tracking URI it
cannot serve (checked with the other settings, at start)."""
from __future__ import annotations

import importlib.util

import pytest

from services.common.tracking import tracker as tracking
from services.common.contract.errors import ValidationError
from services.common.contract.settings import ServiceSettings


def test_a_jobs_experiment_is_its_flows_or_ftlab():
    assert tracking.experiment_of("demo:train:0123abcd") == "demo"
    assert tracking.experiment_of("phase1:evaluate:ff:attempt-2") == "phase1"
    assert tracking.experiment_of("") == tracking.experiment_of("3f2a9c") == "ftlab"


def test_configs_flatten_to_params_and_metric_names_group_by_task():
    params = tracking.flatten({"lora": {"r": 8, "target_modules": ["q_proj"]}, "tasks": [{"task": "arc", "limit": 4}],
                               "dtype": None, "learning_rate": 0.0002})
    assert params == {"lora.r": "8", "lora.target_modules": "['q_proj']", "tasks.0.task": "arc", "tasks.0.limit": "4",
                      "learning_rate": "0.0002"}
    assert tracking.metric_key("ai2_arc__accuracy") == "ai2_arc/accuracy"
    assert tracking.run_name("evaluate", {"model": "M", "eval_id": "eval-1"}) == "eval M eval-1"
    assert tracking.run_name("train", {"output_name": "M-arc_SFT_LoRa8_NoQuant"}) == "M-arc_SFT_LoRa8_NoQuant"


def test_empty_uri_means_no_tracker():
    assert isinstance(tracking.tracker_for("trainer", None, lambda *_: None, uri=""), tracking.NullTracker)


def test_the_embedded_stack_tracks_under_its_home_unless_turned_off(monkeypatch, tmp_path):
    from ftlab import stack
    monkeypatch.setattr(stack, "STATE_DIR", tmp_path)
    monkeypatch.delenv("FTLAB_TRACKING_URI", raising=False)
    assert stack.stack_env()["FTLAB_TRACKING_URI"] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("FTLAB_TRACKING_URI", "")
    assert stack.stack_env()["FTLAB_TRACKING_URI"] == ""
    monkeypatch.setenv("FTLAB_TRACKING_URI", "http://mlflow:5000")
    assert stack.stack_env()["FTLAB_TRACKING_URI"] == "http://mlflow:5000"


def test_a_service_refuses_a_tracking_uri_without_mlflow_with_its_other_bad_settings(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    env = {"FTLAB_TRACKING_URI": "http://mlflow:5000", "FTLAB_MAX_RUNNING_JOBS": "0"}
    with pytest.raises(ValidationError) as exc:
        ServiceSettings.from_env("trainer", env)
    assert any("FTLAB_TRACKING_URI" in p and "mlflow is not installed" in p for p in exc.value.problems)
    assert any("FTLAB_MAX_RUNNING_JOBS" in p for p in exc.value.problems)
    ServiceSettings.from_env("trainer", {"FTLAB_TRACKING_URI": ""})  # off: nothing to check
