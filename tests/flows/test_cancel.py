"""Cancelling an experiment cancels its jobs in the services, and only its jobs: the request ids
the flow submits under carry the experiment's name (real services, no Prefect start needed)."""
from __future__ import annotations

import time

from flows.experiment import plan
from flows.pipeline import cancel_jobs
from services.common.rpc.clients import state_name
from tests.conftest import TINY, ctrl_c_able

LONG = {"peft_method": "lora", "lora": {"r": 4}, "max_steps": 5000, "train_limit": 8, "per_device_batch_size": 1,
        "gradient_accumulation_steps": 1, "max_seq_length": 64}


def _plan(name: str, seed: int):
    return plan({"name": name, "base_models": [TINY], "datasets": ["arc"], "train": [{**LONG, "seed": seed}],
                 "evaluate": {"tasks": [{"task": "ai2_arc", "limit": 2}]}})


def _wait(client, job_id, states, timeout=60.0):
    deadline = time.time() + timeout
    while (s := state_name(client.get(job_id).state)) not in states:
        assert time.time() < deadline, f"{job_id} still {s}"
        time.sleep(0.2)
    return s


def test_cancel_jobs_stops_the_experiments_running_and_queued_jobs_only(services, monkeypatch):
    for name, svc in services["running"].items():
        monkeypatch.setenv(f"FTLAB_{name.upper()}_ADDR", svc.address)
    trainer = services["clients"]["trainer"]
    ours, theirs = _plan("mine", 0).stage("train")[0], _plan("theirs", 1).stage("train")[0]
    running = trainer.submit(ours.spec, ours.request_id("mine"))
    _wait(trainer, running.job_id, {"RUNNING"})
    other = trainer.submit(theirs.spec, theirs.request_id("theirs"))  # queued behind ours
    queued_spec = {**ours.spec, "seed": 7, "output_name": ours.output + "-s7"}
    queued = trainer.submit(queued_spec, "mine:train:second")

    cancelled = cancel_jobs("mine")
    assert sorted(cancelled) == sorted([f"trainer/{running.job_id}", f"trainer/{queued.job_id}"])
    assert _wait(trainer, running.job_id, {"CANCELLED", "FAILED", "SUCCEEDED"}) == "CANCELLED"
    assert _wait(trainer, queued.job_id, {"CANCELLED", "FAILED", "SUCCEEDED"}) == "CANCELLED"
    assert state_name(trainer.get(other.job_id).state) in ("QUEUED", "RUNNING")  # another experiment's job
    assert cancel_jobs("mine") == []  # nothing of ours left
    trainer.cancel(other.job_id)
    _wait(trainer, other.job_id, {"CANCELLED", "FAILED", "SUCCEEDED"})


def test_interrupting_a_flow_run_cancels_its_running_job(services, tmp_path):
    """Ctrl-C on `ftlab run` (real Prefect, real services): the training job it submitted ends CANCELLED."""
    import os
    import signal
    import subprocess
    import sys

    import yaml
    plan_file = tmp_path / "longrun.yaml"
    plan_file.write_text(yaml.safe_dump({"name": "longrun", "base_models": [TINY], "datasets": ["arc"],
                                         "train": [LONG]}))
    env = dict(os.environ, FTLAB_STORAGE="local", FTLAB_LOCAL_ROOT=str(services["store"].root),
               PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               **{f"FTLAB_{n.upper()}_ADDR": s.address for n, s in services["running"].items()})
    proc = subprocess.Popen([sys.executable, "-m", "ftlab.cli", "run", str(plan_file)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=ctrl_c_able)
    trainer = services["clients"]["trainer"]
    try:
        deadline = time.time() + 240
        while not [j for j in trainer.list_all() if state_name(j.state) == "RUNNING"]:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.time() < deadline, "the flow never started its training job"
            time.sleep(0.5)
        job = next(j for j in trainer.list_all() if state_name(j.state) == "RUNNING")
        assert job.request_id.startswith("longrun:train:")
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out
    assert _wait(trainer, job.job_id, {"CANCELLED", "FAILED", "SUCCEEDED"}) == "CANCELLED", out
    assert "cancelled 1 job(s)" in out, out


def test_after_an_interrupt_no_step_submits_a_job(services, monkeypatch):
    """The interrupted flow's step threads go on running: one whose upstream finishes after the
    main thread cancelled the jobs must not submit a new one (seen in a mini-study run)."""
    from flows import pipeline
    exp = _plan("stopped", 3)
    step = exp.stage("train")[0]
    monkeypatch.setattr(pipeline, "_STOPPING", {"stopped"})
    for name, svc in services["running"].items():
        monkeypatch.setenv(f"FTLAB_{name.upper()}_ADDR", svc.address)
    r = pipeline.run_step.fn(step, "stopped", 60.0, [])
    assert r["status"] == "cancelled" and "interrupted" in r["error"]
    assert not services["clients"]["trainer"].list_all()  # nothing was submitted
