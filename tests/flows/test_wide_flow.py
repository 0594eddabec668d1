"""A flow as wide as a phase (issue #28): 64 training steps in flight against the real services
through `ftlab run` (real Prefect). While they wait, the trainer answers every health probe within a
second; a Ctrl-C mid-run cancels every one of the 64 jobs within seconds."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import yaml

from services.common.rpc.clients import state_name
from tests.conftest import TINY, ctrl_c_able
from tests.flows.test_cancel import LONG

WIDTH = 64


def test_a_64_step_flow_keeps_the_trainer_healthy_and_its_cancel_reaches_every_job(services, tmp_path):
    plan_file = tmp_path / "wide.yaml"
    plan_file.write_text(yaml.safe_dump({"name": "wide", "base_models": [TINY], "datasets": ["arc"],
                                         "train": [{**LONG, "lora": {"r": r}} for r in range(1, WIDTH + 1)]}))
    env = dict(os.environ, FTLAB_STORAGE="local", FTLAB_LOCAL_ROOT=str(services["store"].root),
               PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               **{f"FTLAB_{n.upper()}_ADDR": s.address for n, s in services["running"].items()})
    proc = subprocess.Popen([sys.executable, "-m", "ftlab.cli", "run", str(plan_file)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=ctrl_c_able)
    trainer = services["clients"]["trainer"]

    def ours():
        return [j for j in trainer.list_all() if j.request_id.startswith("wide:")]
    probes = []
    try:
        deadline = time.time() + 300
        while len(ours()) < WIDTH or not any(state_name(j.state) == "RUNNING" for j in ours()):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.time() < deadline, f"the flow submitted {len(ours())} of {WIDTH} jobs"
            time.sleep(0.5)
        for _ in range(10):  # every step is waiting on its job now
            t = time.perf_counter()
            probes.append(trainer.healthy(timeout_s=1.0) and time.perf_counter() - t < 1.0)
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        t_cancel = time.time()
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert probes == [True] * len(probes), probes
    assert proc.returncode != 0, out
    assert f"cancelled {WIDTH} job(s)" in out, out[-3000:]
    deadline = t_cancel + 60
    while (left := [j.job_id for j in ours() if state_name(j.state) not in ("CANCELLED",)]) and time.time() < deadline:
        time.sleep(0.5)
    assert left == [], f"{len(left)} of {WIDTH} jobs not cancelled"
