"""A generated matrix of malformed requests (issue 14, fault 8): every field of every request
message, found through the proto descriptors (so fields added later are covered too), set to bad
values of its kind — huge strings, NUL/newline, path traversal, negative/zero/huge numbers,
NaN/inf, unknown enum numbers, duplicates, empty and huge lists — sent through real gRPC to the
three real services. Every answer must be OK or INVALID_ARGUMENT / FAILED_PRECONDITION /
NOT_FOUND (never INTERNAL, UNKNOWN or RESOURCE_EXHAUSTED), short, and a refused request writes
nothing. Values no valid request can hold (control characters, traversal, NaN...) must be refused.

The services run with ``max_running=0``: an accepted request is queued, never run."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import grpc
import pytest

from services.common.storage import artifacts
from services.common.rpc.clients import _SERVICES
from services.common.generated.ftlab.v1 import jobs_pb2
from services.common.contract.errors import MAX_ERROR_CHARS
from services.common.jobs.runtime import RuntimeOptions
from services.common.rpc.service import RunningService, Security
from tests.conftest import snapshot

OK_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.NOT_FOUND}
HUGE = "x" * 20_000
# (value, must_refuse): strings every field of ours must refuse (names, choices, ids).
BAD_STRINGS = [(HUGE, True), ("a\x00b", True), ("a\nb", True), ("../../etc/passwd", True), ("/abs/path", True),
               (" ", True), ("é" * 300, True), ("{0}%s%n", True), ("", False)]
BAD_INTS = [-1, 0, 1, -2**31, 2**31 - 1]
BAD_INT64 = [-1, 0, -2**63, 2**63 - 1]
BAD_FLOATS = [(math.nan, True), (math.inf, True), (-math.inf, True), (-1.0, False), (0.0, False),
              (1e308, False), (5e-324, False)]
BAD_LISTS = [([HUGE], True), (["a\x00"], True), (["../../etc/passwd"], True), (["a\nb"], True), ([""], True),
             (["q_proj", "q_proj"], True), (["x"] * 5000, True), ([], False)]
CONFIG = {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
          "head_dim": 16, "num_hidden_layers": 2, "num_key_value_heads": 2, "vocab_size": 1000}


def _dataset(store, name, task, columns, rows=1000):
    with tempfile.TemporaryDirectory() as d:
        for s in ("train", "test"):
            Path(d, f"{s}.parquet").write_bytes(b"PAR1")
        artifacts.commit_dir(store, "datasets", name, d, {
            "task": task, "splits": {s: {"rows": rows, "columns": list(columns)} for s in ("train", "test")}})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import json

    from services.common.storage.store import LocalStore
    from services.evaluator.server import SERVICE as EVALUATOR
    from services.quantizer.server import SERVICE as QUANTIZER
    from services.trainer.server import SERVICE as TRAINER
    store = LocalStore(tmp_path_factory.mktemp("matrix") / "storage")
    store.ensure_buckets()
    with tempfile.TemporaryDirectory() as d:
        Path(d, "config.json").write_text(json.dumps(CONFIG))
        artifacts.commit_dir(store, "models", "base-m", d, {"kind": "base"})
    _dataset(store, "arc", "ai2_arc", ["id", "question", "answer"])
    running = {s.name: RunningService(s, store, "127.0.0.1:0", RuntimeOptions(max_running=0), security=Security())
               for s in (TRAINER, QUANTIZER, EVALUATOR)}
    yield store, running
    for s in running.values():
        s.stop(1.0)


def _bases(service):
    """Valid specs (proto JSON) to mutate one field at a time: one per quantization method, so every
    method's options are exercised (methods added later included)."""
    if service == "trainer":
        return [{"base_model": "base-m", "dataset": "arc", "max_steps": 1}]
    if service == "evaluator":
        return [{"model": "base-m", "tasks": [{"task": "arc", "limit": 2}]}]
    from services.quantizer.ptq import PTQ_METHODS as REGISTRY
    return [{"source_model": "base-m", "method": m, "dataset": "arc"} for m in REGISTRY]


def _variants(desc, prefix=""):
    """(path, value, must_refuse) for every field of message ``desc`` and its sub-messages."""
    F = desc.fields[0]  # any field: for the type constants
    out = []
    for f in desc.fields:
        path = prefix + f.name
        if f.type == F.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
            continue
        if f.type == F.TYPE_MESSAGE:
            if f.is_repeated:
                out += [(path, [], False), (path, "DUP2", True), (path, "MANY", True)]
                out += _variants(f.message_type, path + "[0].")
            else:
                out += _variants(f.message_type, path + ".")
            continue
        if f.is_repeated:
            if f.type == F.TYPE_STRING:
                out += [(path, v, r) for v, r in BAD_LISTS]
            elif f.type == F.TYPE_ENUM:
                out += [(path, [99], True), (path, [-5], True)]
            continue
        if f.type == F.TYPE_STRING:
            out += [(path, v, r) for v, r in BAD_STRINGS]
        elif f.type in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32, F.TYPE_UINT32):
            out += [(path, v, False) for v in BAD_INTS]
        elif f.type in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
            out += [(path, v, False) for v in BAD_INT64]
        elif f.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            out += [(path, v, r) for v, r in BAD_FLOATS]
        elif f.type == F.TYPE_BOOL:
            out += [(path, True, False), (path, False, False)]
        elif f.type == F.TYPE_ENUM:
            out += [(path, 99, True)]
    return out


def _set(msg, path, value):
    """Set a dotted path (``tasks[0].limit``) on a proto message."""
    *parents, leaf = path.split(".")
    for part in parents:
        name, _, idx = part.partition("[")
        msg = getattr(msg, name)[int(idx[:-1])] if idx else getattr(msg, name)
    field = msg.DESCRIPTOR.fields_by_name[leaf]
    if field.is_repeated and field.type == field.TYPE_MESSAGE:
        items, repeated = list(getattr(msg, leaf)), getattr(msg, leaf)
        del repeated[:]
        repeated.extend([] if value == [] else items * (2 if value == "DUP2" else 2000))
    elif field.is_repeated:
        getattr(msg, leaf)[:] = value
    else:
        setattr(msg, leaf, value)


def _check(store, call, what, must_refuse, failures):
    before = snapshot(store)
    try:
        call()
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
    if code not in OK_CODES or "could not be validated" in details:  # the door's crash net caught a bug
        failures.append(f"{what}: {code.name}: {details[:300]!r}")
    elif len(details) > MAX_ERROR_CHARS:
        failures.append(f"{what}: {code.name}: error text of {len(details)} chars")
    elif must_refuse and code == grpc.StatusCode.OK:
        failures.append(f"{what}: accepted")
    elif code != grpc.StatusCode.OK and snapshot(store) != before:
        failures.append(f"{what}: {code.name} but wrote objects")
    return code


@pytest.mark.parametrize("service", ["trainer", "quantizer", "evaluator"])
def test_generated_submit_matrix(world, service):
    store, running = world
    _, rpc, spec_cls, req_cls = _SERVICES[service]
    from google.protobuf import json_format
    failures, n = [], 0
    with grpc.insecure_channel(running[service].address) as ch:
        stub = _SERVICES[service][0](ch)
        for base in _bases(service):
            for path, value, must_refuse in _variants(spec_cls.DESCRIPTOR):
                spec = json_format.ParseDict(base, spec_cls())
                _set(spec, path, value)
                what = f"{base.get('method', service)} {path}={str(value)[:40]!r}"
                _check(store, lambda: getattr(stub, rpc)(req_cls(spec=spec), timeout=30), what, must_refuse, failures)
                n += 1
        for value, _ in BAD_STRINGS:  # request_id is an opaque key: only size and control characters matter
            if len(value) > 256 or "\x00" in value or "\n" in value:
                _check(store, lambda: getattr(stub, rpc)(req_cls(spec=json_format.ParseDict(_bases(service)[0],
                       spec_cls()), request_id=value), timeout=30), f"request_id={value[:20]!r}", True, failures)
                n += 1
    assert n > 50
    assert not failures, f"{len(failures)} of {n} requests:\n" + "\n".join(failures)


@pytest.mark.parametrize("service", ["trainer", "quantizer", "evaluator"])
def test_generated_job_rpc_matrix(world, service):
    store, running = world
    failures, n = [], 0
    requests = {"GetJob": jobs_pb2.GetJobRequest, "ListJobs": jobs_pb2.ListJobsRequest,
                "WatchJob": jobs_pb2.WatchJobRequest, "CancelJob": jobs_pb2.CancelJobRequest}
    with grpc.insecure_channel(running[service].address) as ch:
        stub = _SERVICES[service][0](ch)
        for rpc, req_cls in requests.items():
            for path, value, must_refuse in _variants(req_cls.DESCRIPTOR):
                req = req_cls()
                _set(req, path, value)
                if rpc == "WatchJob" and path != "job_id":
                    req.job_id = "no-such-job"

                def call():
                    out = getattr(stub, rpc)(req, timeout=10)
                    return list(out) if rpc == "WatchJob" else out
                _check(store, call, f"{rpc} {path}={str(value)[:40]!r}", must_refuse, failures)
                n += 1
    assert not failures, f"{len(failures)} of {n} requests:\n" + "\n".join(failures)
