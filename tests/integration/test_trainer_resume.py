"""A trainer service process killed with SIGKILL mid-job: restarted, it re-queues the job, which
continues from its last checkpoint in storage, and the loss curve goes on from that step."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from services.common.storage import artifacts
from services.common.rpc.clients import ServiceClient, state_name
from services.common.generated.ftlab.v1 import jobs_pb2
from services.trainer import checkpoints
from tests.conftest import ROOT, TINY

SPEC = {"base_model": TINY, "dataset": "arc", "max_steps": 12, "train_limit": 8, "per_device_batch_size": 1,
        "gradient_accumulation_steps": 1, "max_seq_length": 64, "save_steps": 3, "learning_rate": 1e-3,
        "lora": {"r": 4}, "output_name": "resumed"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(root, addr):
    env = {**os.environ, "FTLAB_STORAGE": "local", "FTLAB_LOCAL_ROOT": str(root), "FTLAB_TRAINER_ADDR": addr,
           "FTLAB_LOG_FORMAT": "text", "HF_HUB_OFFLINE": "1"}
    env.pop("FTLAB_LISTEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "services.trainer.server"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = ServiceClient("trainer", addr)
    client.wait_healthy(120)
    return proc, client


def test_sigkilled_service_resumes_the_job_from_its_checkpoint(seeded_store):
    store, addr = seeded_store, f"127.0.0.1:{_free_port()}"
    proc, client = _start(store.root, addr)
    try:
        job = client.submit(SPEC, "resume-me")
        prefix = None
        deadline = time.time() + 300
        while time.time() < deadline:  # wait for the first committed checkpoint, then kill
            keys = store.list_keys("jobs", "checkpoints/trainer/")
            if any(k.endswith("/manifest.json") for k in keys):
                prefix = keys[0].split("/step-")[0]
                break
            assert proc.poll() is None
            time.sleep(0.05)
        assert prefix, "no checkpoint was committed"
        killed_at = checkpoints.committed_steps(store, prefix)[-1]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        client.close()
        assert artifacts.read_manifest(store, "models", "resumed") is None
        record = json.loads(store.get_bytes("jobs", f"trainer/{job.job_id}.json"))
        assert record["state"] == "RUNNING" and record["progress_step"] < SPEC["max_steps"]
        # The checkpoint says which dtype it trained in. Pretend another machine wrote it in the
        # other one (dtype auto resolves per machine): the resume must say so, not hide it.
        ck = f"{prefix}/step-{checkpoints.committed_steps(store, prefix)[-1]}"  # the latest, after the kill
        ck_manifest = artifacts.read_manifest(store, "jobs", ck)
        assert ck_manifest["dtype"] in ("float32", "bfloat16")
        other = {"float32": "bfloat16", "bfloat16": "float32"}[ck_manifest["dtype"]]
        store.put_bytes("jobs", f"{ck}/{artifacts.MANIFEST}", json.dumps({**ck_manifest, "dtype": other}).encode())

        proc, client = _start(store.root, addr)
        events = []
        final = client.wait(job.job_id, 300, on_event=events.append)
        assert state_name(final.state) == "SUCCEEDED", final.error
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    meta = json.loads(store.get_bytes("models", "resumed/training_metadata.json"))
    resumed = meta["resumed_from_step"]
    assert resumed >= killed_at >= 3 and resumed % 3 == 0 and meta["attempt"] == 2
    steps = [p["step"] for p in meta["loss_curve"]]
    assert steps == list(range(1, SPEC["max_steps"] + 1))  # history up to the checkpoint, then onwards
    requeued = next(i for i, e in enumerate(events) if "re-queued" in e.message)
    after = [e for e in events[requeued:] if e.type == jobs_pb2.EVENT_TYPE_PROGRESS]
    assert after and after[0].step == resumed + 1  # the second attempt starts after the checkpoint
    assert any(f"resuming from checkpoint step {resumed}" in e.message for e in events)
    assert final.metrics["resumed_from_step"] == resumed
    assert meta["resumed_from_dtype"] == other != meta["dtype"]
    assert any(f"the checkpoint trained in {other}, this run trains in {meta['dtype']}" in e.message for e in events)
    assert not store.list_keys("jobs", "checkpoints/")  # cleared once the model is committed
