"""The three services over real gRPC on loopback, with the real tiny Qwen3 and the seed ARC data."""
from __future__ import annotations

import json

import grpc
import pandas as pd
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.storage import artifacts
from services.common.rpc.clients import JobFailed, state_name
from services.common.contract.errors import NotFoundError, PreconditionError, ValidationError
from services.common.generated.ftlab.v1 import jobs_pb2
from tests.conftest import TINY, snapshot

TRAIN = {"base_model": TINY, "dataset": "arc", "max_steps": 2, "train_limit": 8, "per_device_batch_size": 4,
         "gradient_accumulation_steps": 1, "max_seq_length": 256, "lora": {"r": 4}}
TRAINED = "Qwen3-tiny-arc_SFT_LoRa4_NoQuant"


def test_train_quantize_evaluate_end_to_end(services):
    c, store = services["clients"], services["store"]
    events = []
    job = c["trainer"].run(TRAIN, "e2e-train", timeout_s=300, on_event=events.append)
    assert state_name(job.state) == "SUCCEEDED" and job.outputs["model"] == f"s3://models/{TRAINED}/"
    assert job.train.base_model == TINY and job.metrics["final_loss"] > 0
    assert any(e.type == jobs_pb2.EVENT_TYPE_PROGRESS and "loss" in e.metrics for e in events)
    assert events[-1].state == jobs_pb2.JOB_STATE_SUCCEEDED
    manifest = artifacts.read_manifest(store, "models", TRAINED)
    assert manifest["parents"] == [TINY] and manifest["kind"] == "trained"
    meta = json.loads(store.get_bytes("models", f"{TRAINED}/training_metadata.json"))
    assert meta["model_info"]["trainable_params"] < meta["model_info"]["total_params"]
    assert meta["training_parameters"]["lora"]["r"] == 4 and len(meta["loss_curve"]) == 2
    assert store.exists("models", f"{TRAINED}/adapter/adapter_config.json")

    q = c["quantizer"].run({"source_model": TRAINED, "method": "bnb_int8"}, "e2e-quant", timeout_s=300)
    qname = "Qwen3-tiny-arc_SFT_LoRa4_Int8_BnB"
    assert q.outputs["model"] == f"s3://models/{qname}/"
    qmeta = json.loads(store.get_bytes("models", f"{qname}/quantization_metadata.json"))
    assert qmeta["quantization"]["quant_tag"] == "Int8_BnB" and qmeta["quantization"]["weights_bits"] == 8

    for model in (TINY, TRAINED, qname):
        ev = c["evaluator"].run({"model": model, "tasks": [{"task": "arc", "limit": 4}], "batch_size": 2,
                                 "max_new_tokens": 8}, f"e2e-eval-{model}", timeout_s=300)
        prefix = ev.outputs["evaluation"].removeprefix("s3://evaluations/")
        metrics = json.loads(store.get_bytes("evaluations", prefix + "metrics.json"))
        arc = metrics["datasets"]["ai2_arc"]
        assert arc["total_samples"] == 4 and arc["type"] == "mcq4"
        assert {"macro_f1", "per_class", "confusion_matrix"} <= set(arc["metrics"])
        assert metrics["summary"]["total_samples"] == 4 and len(arc["latency_seconds"]["per_prompt"]) == 4
        assert metrics["quantization"]["quant_tag"] == ("Int8_BnB" if model == qname else "NoQuant")
        store.get_file("evaluations", prefix + "predictions.parquet", services["store"].root / "p.parquet")
        preds = pd.read_parquet(services["store"].root / "p.parquet")
        assert len(preds) == 4 and {"id", "output", "parsed", "gold", "correct", "latency_s"} <= set(preds.columns)


def test_trained_and_quantized_models_reload_and_generate(services, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    c, store = services["clients"], services["store"]
    c["trainer"].run(TRAIN, "reload-train", timeout_s=300)
    c["quantizer"].run({"source_model": TRAINED, "method": "bnb_int8"}, "reload-quant", timeout_s=300)
    for name in (TRAINED, "Qwen3-tiny-arc_SFT_LoRa4_Int8_BnB"):
        local = tmp_path / name
        artifacts.fetch_dir(store, "models", name, local)
        tok = AutoTokenizer.from_pretrained(local)
        model = AutoModelForCausalLM.from_pretrained(local, device_map={"": "cpu"})
        ids = tok("Hello", return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
        assert out.shape[1] == ids["input_ids"].shape[1] + 3
    from peft import PeftModel
    base = AutoModelForCausalLM.from_pretrained(tmp_path / TRAINED)
    PeftModel.from_pretrained(base, tmp_path / TRAINED / "adapter")


def test_same_request_id_gives_one_job(services):
    t = services["clients"]["trainer"]
    a = t.submit(TRAIN, "same-id")
    b = t.submit(TRAIN, "same-id")
    assert a.job_id == b.job_id
    assert [j.job_id for j in t.list_all()] == [a.job_id]
    t.cancel(a.job_id)
    t.wait(a.job_id, 60)


def test_cancel_running_training_within_10s(services):
    t, runtime = services["clients"]["trainer"], services["running"]["trainer"].runtime
    job = t.submit(dict(TRAIN, max_steps=100000), "long")
    for ev in t.watch(job.job_id):
        if ev.type == jobs_pb2.EVENT_TYPE_PROGRESS:
            break
    pid = runtime._procs[job.job_id].pid
    import os
    import time
    t0 = time.time()
    t.cancel(job.job_id)
    final = t.wait(job.job_id, 15)
    assert state_name(final.state) == "CANCELLED" and time.time() - t0 < 10
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert artifacts.read_manifest(services["store"], "models", TRAINED) is None  # nothing committed


def test_a_run_that_times_out_cancels_its_job_when_asked(services):
    """What a flow step does when its stage's timeout passes: the job is cancelled, not left running."""
    t = services["clients"]["trainer"]
    with pytest.raises(TimeoutError, match="cancelled it"):
        t.run(dict(TRAIN, max_steps=100000), "gives-up", timeout_s=1.0, cancel_on_timeout=True)
    final = t.wait(t.submit(dict(TRAIN, max_steps=100000), "gives-up").job_id, 30)  # same request id: same job
    assert state_name(final.state) == "CANCELLED"
    assert artifacts.read_manifest(services["store"], "models", TRAINED) is None


def test_a_stage_timeout_counts_the_jobs_run_time_not_its_time_queued(services):
    """A flow submits a whole sweep at once; a job waiting in the queue behind another must not be
    cancelled for the other's run time (the mini-study's last sweep trainings were, at 3600 s)."""
    import threading
    import time
    t = services["clients"]["trainer"]
    first = t.submit(dict(TRAIN, max_steps=100000), "holds-the-slot")
    for ev in t.watch(first.job_id):
        if ev.type == jobs_pb2.EVENT_TYPE_PROGRESS:
            break
    threading.Timer(6.0, t.cancel, [first.job_id]).start()  # the slot frees after 6 s
    t0 = time.time()
    with pytest.raises(TimeoutError, match="still RUNNING after 3s; cancelled it"):
        t.run(dict(TRAIN, max_steps=100000), "queued-behind", timeout_s=3.0, cancel_on_timeout=True)
    assert time.time() - t0 >= 6.0 + 3.0  # queued 6 s (not counted), then ran 3 s
    assert state_name(t.wait(first.job_id, 30).state) == "CANCELLED"


@pytest.mark.parametrize("service,spec,expected", [
    ("trainer", {"base_model": TINY, "dataset": "arc", "peft_method": "lorax", "lora": {"r": 0, "alpha": -1},
                 "learning_rate": -1.0, "max_steps": 0},
     ["peft_method: unknown 'lorax'", "lora.r: 0", "lora.alpha: -1", "learning_rate", "max_steps"]),
    ("trainer", {"base_model": "../../etc", "dataset": ""}, ["base_model", "dataset: required"]),
    ("quantizer", {"source_model": TINY, "method": "gptq-9bit", "llm_int8_threshold": -2.0},
     ["method: unknown 'gptq-9bit'", "llm_int8_threshold"]),
    ("evaluator", {"model": TINY, "tasks": [{"task": "nope"}, {"task": "arc", "limit": 0}], "batch_size": 0,
                   "max_new_tokens": -5}, ["tasks[0].task", "tasks[1].limit", "batch_size", "max_new_tokens"]),
    ("evaluator", {"model": TINY}, ["tasks: at least one task"]),
])
def test_bad_specs_name_every_problem_and_write_nothing(services, service, spec, expected):
    before = snapshot(services["store"])
    with pytest.raises(ValidationError) as exc:
        services["clients"][service].submit(spec, "bad")
    for fragment in expected:
        assert fragment in str(exc.value), (fragment, str(exc.value))
    assert snapshot(services["store"]) == before


@pytest.mark.parametrize("service,spec", [
    ("trainer", {"base_model": "Qwen3-none-base", "dataset": "arc"}),
    ("trainer", {"base_model": TINY, "dataset": "squad"}),
    ("quantizer", {"source_model": "no-such-model", "method": "bnb_int8"}),
    ("evaluator", {"model": "no-such-model", "tasks": [{"task": "arc"}]}),
])
def test_missing_inputs_are_not_found_and_write_nothing(services, service, spec):
    before = snapshot(services["store"])
    with pytest.raises(NotFoundError):
        services["clients"][service].submit(spec)
    assert snapshot(services["store"]) == before


def test_a_model_without_manifest_does_not_exist(services):
    store = services["store"]
    store.put_bytes("models", "half-uploaded/config.json", b"{}")  # an upload that never committed
    with pytest.raises(NotFoundError):
        services["clients"]["evaluator"].submit({"model": "half-uploaded", "tasks": [{"task": "arc"}]})
    assert "half-uploaded" not in artifacts.list_committed(store, "models")


def test_quantizing_a_quantized_model_is_a_failed_precondition(services):
    c = services["clients"]
    c["quantizer"].run({"source_model": TINY, "method": "bnb_int8"}, "q1", timeout_s=300)
    with pytest.raises(PreconditionError, match="already quantized"):
        c["quantizer"].submit({"source_model": "Qwen3-tiny-base_Int8_BnB", "method": "bnb_int8"})
    with pytest.raises(PreconditionError, match="already exists"):
        c["quantizer"].submit({"source_model": TINY, "method": "bnb_int8"}, "q2")


def test_job_rpcs_errors(services):
    t = services["clients"]["trainer"]
    with pytest.raises(NotFoundError):
        t.get("train-nope")
    with pytest.raises(NotFoundError):
        t.cancel("train-nope")
    with pytest.raises(NotFoundError):
        list(t.watch("train-nope"))
    with pytest.raises(ValidationError):
        t.get("")


def test_failed_job_raises_job_failed_with_reason(services):
    store = services["store"]
    # Valid at the door, broken at run time: the dataset's parquet vanishes after submit.
    store.delete("datasets", "arc/train.parquet")
    with pytest.raises(JobFailed) as exc:
        services["clients"]["trainer"].run(TRAIN, "broken", timeout_s=120)
    assert state_name(exc.value.job.state) == "FAILED" and exc.value.job.error


def test_health_and_reflection(services):
    for name, svc in services["running"].items():
        ch = grpc.insecure_channel(svc.address)
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert f"ftlab.v1.{name.capitalize()}Service" in names and "grpc.health.v1.Health" in names
        ch.close()
