"""The scrub as a Prefect flow (the ``ftlab-verify/verify`` deployment's flow), on real ephemeral
Prefect in a subprocess with its own PREFECT_HOME: a store that is intact completes; one byte
flipped in a committed file makes the run FAIL, and the log names the artifact and the file."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from services.common.storage import artifacts
from tests.conftest import ROOT

RUN = ("import json, sys\nfrom flows.verify import verify_flow\n"
       "state = verify_flow(return_state=True)\n"
       "print('STATE', state.type.value)\n"
       "print('RESULT', json.dumps(state.result(raise_on_failure=False), default=str))\n"
       "sys.exit(0 if state.is_completed() else 1)\n")


def run_flow(store, tmp_path):
    env = dict(os.environ, FTLAB_STORAGE="local", FTLAB_LOCAL_ROOT=str(store.root), PYTHONPATH=str(ROOT),
               FTLAB_CACHE_DIR=str(tmp_path / "cache"), PREFECT_HOME=str(tmp_path / "prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return subprocess.run([sys.executable, "-c", RUN], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_verify_flow_completes_on_intact_storage_and_fails_on_a_flipped_byte(store, tmp_path):
    src = tmp_path / "m"
    src.mkdir()
    (src / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (src / "config.json").write_text(json.dumps({"model_type": "stand-in"}))
    artifacts.commit_dir(store, "models", "m", src, {"kind": "base"})

    ok = run_flow(store, tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "STATE COMPLETED" in ok.stdout and '"intact": 1' in ok.stdout

    data = bytearray(store.get_bytes("models", "m/model.safetensors"))
    data[100] ^= 0x80
    store.put_bytes("models", "m/model.safetensors", bytes(data))
    bad = run_flow(store, tmp_path)
    assert bad.returncode == 1 and "STATE FAILED" in bad.stdout, bad.stdout + bad.stderr
    log = bad.stdout + bad.stderr
    assert "CORRUPT s3://models/m/" in log and "model.safetensors does not match its manifest" in log
