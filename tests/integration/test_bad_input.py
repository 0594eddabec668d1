"""The bad-input matrix: every malformed request we could think of, per service, through real gRPC
(including raw bytes that are not the message at all) → the right status code, a message naming
the field, and not one object written (every bucket listed before and after)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import grpc
import pytest

from services.common.storage import artifacts
from google.protobuf import json_format

from services.common.rpc.clients import _SERVICES
from services.common.generated.ftlab.v1 import jobs_pb2
from services.common.rpc.service import RunningService, Security
from tests.conftest import snapshot
from tests.hardening import make_source

BAD = grpc.StatusCode.INVALID_ARGUMENT
MISSING = grpc.StatusCode.NOT_FOUND
STORED = grpc.StatusCode.FAILED_PRECONDITION  # stored content wrong for the request: the server's, not the caller's
ARC_COLS = ["id", "question", "answer"]


def _dataset(store, name, columns, splits=("train", "test"), task="ai2_arc"):
    """A committed dataset artifact with these columns (validation reads only the manifest)."""
    with tempfile.TemporaryDirectory() as d:
        for s in splits:
            Path(d, f"{s}.parquet").write_bytes(b"PAR1")
        artifacts.commit_dir(store, "datasets", name, d, {
            "task": task, "splits": {s: {"rows": 4, "columns": list(columns)} for s in splits}})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The three real services over a store with a base model, a good dataset, a dataset with the
    wrong columns, one without a test split, and an upload that never committed."""
    from services.common.storage.store import LocalStore
    from services.evaluator.server import SERVICE as EVALUATOR
    from services.quantizer.server import SERVICE as QUANTIZER
    from services.trainer.server import SERVICE as TRAINER
    store = LocalStore(tmp_path_factory.mktemp("bad-input") / "storage")
    store.ensure_buckets()
    make_source(store, "base-m")
    _dataset(store, "arc", ARC_COLS)
    _dataset(store, "wrongcols", ["id", "prompt", "label"])
    _dataset(store, "trainonly", ARC_COLS, splits=("train",))
    store.put_bytes("models", "half/config.json", b"{}")       # no manifest: does not exist
    store.put_bytes("datasets", "halfds/train.parquet", b"PAR1")
    running = {s.name: RunningService(s, store, "127.0.0.1:0", security=Security())
               for s in (TRAINER, QUANTIZER, EVALUATOR)}
    yield store, running
    for s in running.values():
        s.stop(1.0)


T = {"base_model": "base-m", "dataset": "arc"}
Q = {"source_model": "base-m", "method": "bnb_int8"}
E = {"model": "base-m", "tasks": [{"task": "arc"}]}
NAN, INF = "NaN", "Infinity"  # proto JSON spellings of the float values

CASES = {
    "trainer": [
        ("empty", {}, BAD, ["base_model: required", "dataset: required"]),
        ("unknown peft", {**T, "peft_method": "lorax"}, BAD, ["peft_method: unknown 'lorax'", "known: lora"]),
        ("unknown training quant", {**T, "training_quant": "int3"}, BAD, ["training_quant: unknown"]),
        ("negative rank", {**T, "lora": {"r": -4}}, BAD, ["lora.r"]),
        ("huge rank", {**T, "lora": {"r": 1_000_000}}, BAD, ["lora.r"]),
        ("bad dropout", {**T, "lora": {"dropout": 1.5}}, BAD, ["lora.dropout"]),
        ("negative lr", {**T, "learning_rate": -1.0}, BAD, ["learning_rate"]),
        ("nan lr", {**T, "learning_rate": NAN}, BAD, ["learning_rate"]),
        ("inf grad norm", {**T, "max_grad_norm": INF}, BAD, ["max_grad_norm"]),
        ("huge seq length", {**T, "max_seq_length": 2**31 - 1}, BAD, ["max_seq_length"]),
        ("zero steps", {**T, "max_steps": 0}, BAD, ["max_steps"]),
        ("huge batch", {**T, "per_device_batch_size": 10**6}, BAD, ["per_device_batch_size"]),
        ("negative seed", {**T, "seed": -1}, BAD, ["seed"]),
        ("all-linear mixed", {**T, "lora": {"target_modules": ["all-linear", "q_proj"]}}, BAD,
         ["lora.target_modules"]),
        ("empty target", {**T, "lora": {"target_modules": [" "]}}, BAD, ["lora.target_modules"]),
        ("unknown task", {**T, "task": "chess"}, BAD, ["task:"]),
        ("missing base", {**T, "base_model": "nope"}, MISSING, ["base_model"]),
        ("base without manifest", {**T, "base_model": "half"}, MISSING, ["base_model"]),
        ("missing dataset", {**T, "dataset": "nods", "task": "arc"}, MISSING, ["dataset"]),
        ("dataset without manifest", {**T, "dataset": "halfds", "task": "arc"}, MISSING, ["dataset"]),
        ("wrong task columns", {**T, "dataset": "wrongcols"}, STORED, ["dataset: 'wrongcols' lacks", "question"]),
        ("bad output name", {**T, "output_name": "a/b"}, BAD, ["output_name"]),
    ],
    "quantizer": [
        ("empty", {}, BAD, ["source_model: required", "method: unknown"]),
        ("unknown method", {**Q, "method": "gptq-9bit"}, BAD, ["method: unknown 'gptq-9bit'", "known:"]),
        ("negative threshold", {**Q, "llm_int8_threshold": -2.0}, BAD, ["llm_int8_threshold"]),
        ("huge threshold", {**Q, "llm_int8_threshold": 1e300}, BAD, ["llm_int8_threshold"]),
        ("nan threshold", {**Q, "llm_int8_threshold": NAN}, BAD, ["llm_int8_threshold"]),
        ("missing source", {**Q, "source_model": "nope"}, MISSING, ["source_model"]),
        ("source without manifest", {**Q, "source_model": "half"}, MISSING, ["source_model"]),
        ("bad output name", {**Q, "output_name": "../x"}, BAD, ["output_name"]),
    ],
    "evaluator": [
        ("empty", {}, BAD, ["model: required", "tasks: at least one task"]),
        ("unknown task", {**E, "tasks": [{"task": "chess"}]}, BAD, ["tasks[0].task", "chess"]),
        ("task twice", {**E, "tasks": [{"task": "arc"}, {"task": "ai2_arc"}]}, BAD, ["tasks: each task at most once"]),
        ("zero limit", {**E, "tasks": [{"task": "arc", "limit": 0}]}, BAD, ["tasks[0].limit"]),
        ("negative limit", {**E, "tasks": [{"task": "arc", "limit": -5}]}, BAD, ["tasks[0].limit"]),
        ("negative batch", {**E, "batch_size": -1}, BAD, ["batch_size"]),
        ("huge batch", {**E, "batch_size": 2**31 - 1}, BAD, ["batch_size"]),
        ("huge new tokens", {**E, "max_new_tokens": 2**31 - 1}, BAD, ["max_new_tokens"]),
        ("negative seed", {**E, "seed": -7}, BAD, ["seed"]),
        ("missing split", {**E, "tasks": [{"task": "arc", "dataset": "trainonly"}]}, BAD,
         ["tasks[0].split", "has no split 'test'"]),
        ("wrong task columns", {**E, "tasks": [{"task": "arc", "dataset": "wrongcols"}]}, STORED,
         ["tasks[0].dataset", "lacks"]),
        ("missing dataset", {**E, "tasks": [{"task": "arc", "dataset": "nods"}]}, MISSING, ["tasks[0].dataset"]),
        ("missing model", {**E, "model": "nope"}, MISSING, ["model"]),
        ("model without manifest", {**E, "model": "half"}, MISSING, ["model"]),
        ("bad eval id", {**E, "eval_id": "x/../y"}, BAD, ["eval_id"]),
    ],
}

# Bytes that are not the request message at all, or a field sent with the wrong wire type.
RAW = [
    ("garbage", b"\xff\xff\xff\xff", BAD, ["request: not a valid"]),
    ("truncated", b"\x0a\x10abc", BAD, ["request: not a valid"]),
]
SUBMIT_RPC = {"trainer": "/ftlab.v1.TrainerService/SubmitTrain",
              "quantizer": "/ftlab.v1.QuantizerService/SubmitQuantize",
              "evaluator": "/ftlab.v1.EvaluatorService/SubmitEvaluate"}
WRONG_WIRE_TYPE = {  # SubmitXRequest.spec (field 1) holding its field 1 as a varint, not a string
    "trainer": (b"\x0a\x02\x08\x05", ["base_model: wrong wire type"]),
    "quantizer": (b"\x0a\x02\x08\x05", ["source_model: wrong wire type"]),
    "evaluator": (b"\x0a\x02\x08\x05", ["model: wrong wire type"]),
}


def _call(world, service, fn):
    store, running = world
    before = snapshot(store)
    with grpc.insecure_channel(running[service].address) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            fn(ch)
    assert snapshot(store) == before  # not one object written, in any bucket
    assert running[service].runtime.list()[0] == []
    return exc.value


def _submit(spec):
    """Submit ``spec`` (proto JSON) as a real request message, bypassing the client's conveniences."""
    def fn(ch, service):
        _, _, spec_cls, req_cls = _SERVICES[service]
        msg = req_cls(spec=json_format.ParseDict(spec, spec_cls()), request_id="bad")
        return ch.unary_unary(SUBMIT_RPC[service], request_serializer=lambda m: m.SerializeToString(),
                              response_deserializer=jobs_pb2.Job.FromString)(msg)
    return fn


@pytest.mark.parametrize("service", ["trainer", "quantizer", "evaluator"])
def test_bad_input_matrix(world, service):
    failures = []
    cases = [(name, _submit(spec), code, frags) for name, spec, code, frags in CASES[service]]
    cases += [(name, (lambda raw: lambda ch, svc: ch.unary_unary(SUBMIT_RPC[svc])(raw))(raw), code, frags)
              for name, raw, code, frags in RAW]
    raw, frags = WRONG_WIRE_TYPE[service]
    cases.append(("wrong wire type", (lambda r: lambda ch, svc: ch.unary_unary(SUBMIT_RPC[svc])(r))(raw), BAD, frags))
    for name, fn, code, fragments in cases:
        err = _call(world, service, lambda ch: fn(ch, service))
        if err.code() != code or not all(f in (err.details() or "") for f in fragments):
            failures.append(f"{name}: {err.code().name}: {err.details()!r} (wanted {code.name} with {fragments})")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("service", ["trainer", "quantizer", "evaluator"])
def test_bad_job_rpcs(world, service):
    rpc = {"get": ("GetJob", jobs_pb2.GetJobRequest), "list": ("ListJobs", jobs_pb2.ListJobsRequest),
           "watch": ("WatchJob", jobs_pb2.WatchJobRequest), "cancel": ("CancelJob", jobs_pb2.CancelJobRequest)}
    prefix = SUBMIT_RPC[service].rsplit("/", 1)[0]

    def call(name, **fields):
        method, req = rpc[name]
        def fn(ch):
            kind = ch.unary_stream if name == "watch" else ch.unary_unary
            out = kind(f"{prefix}/{method}", request_serializer=lambda m: m.SerializeToString())(req(**fields))
            return list(out) if name == "watch" else out
        return _call(world, service, fn)
    for name, fields, code, fragment in [
        ("get", {}, BAD, "job_id: required"), ("cancel", {}, BAD, "job_id: required"),
        ("watch", {}, BAD, "job_id: required"), ("get", {"job_id": "nope"}, MISSING, "nope"),
        ("watch", {"job_id": "x", "after_seq": -1}, BAD, "after_seq"),
        ("list", {"page_size": -1}, BAD, "page_size"), ("list", {"states": [99]}, BAD, "states"),
        ("list", {"states": [0]}, BAD, "states"), ("list", {"page_token": "nope"}, BAD, "page_token"),
    ]:
        err = call(name, **fields)
        assert err.code() == code and fragment in err.details(), (name, fields, err.code(), err.details())
    with grpc.insecure_channel(world[1][service].address) as ch:  # garbage bytes on a job RPC too
        with pytest.raises(grpc.RpcError) as exc:
            ch.unary_unary(f"{prefix}/GetJob")(b"\xff\xff")
        assert exc.value.code() == BAD and "request: not a valid GetJob" in exc.value.details()


def test_every_problem_arrives_apart_as_a_standard_bad_request(world):
    """INVALID_ARGUMENT carries a google.rpc.BadRequest (one field violation per problem), which
    grpcio-status reads; the client turns it into a ValidationError listing each problem."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
    from services.common.rpc.clients import ServiceClient
    from services.common.contract.errors import ValidationError
    spec = {**T, "lora": {"r": -4, "dropout": 1.5}, "learning_rate": -1.0}
    err = _call(world, "trainer", lambda ch: _submit(spec)(ch, "trainer"))
    bad = error_details_pb2.BadRequest()
    rpc_status.from_call(err).details[0].Unpack(bad)
    fields = [v.field for v in bad.field_violations]
    assert {"lora.r", "lora.dropout", "learning_rate"} <= set(fields), fields
    assert all(v.description in err.details() for v in bad.field_violations)
    client = ServiceClient("trainer", world[1]["trainer"].address)
    try:
        with pytest.raises(ValidationError) as exc:
            client.submit(spec, "two-problems")
    finally:
        client.close()
    assert [p for p in exc.value.problems if p.startswith(("lora.", "learning_rate"))] == \
        [v.description for v in bad.field_violations if v.field in ("lora.r", "lora.dropout", "learning_rate")]
