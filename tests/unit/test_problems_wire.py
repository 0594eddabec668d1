"""A refused request's problems reach the caller one by one (not as one "; "-joined line), and a
non-finite number is reported together with every other problem of the spec."""
from __future__ import annotations

import grpc
import pytest

from services.common.rpc.clients import _translate, proto_json
from services.common.contract.errors import NotFoundError, ValidationError
from services.common.generated.ftlab.v1 import train_spec_pb2, trainer_pb2
from services.common.rpc.server import STATUS_DETAILS_KEY, bad_request_status
from services.common.rpc.job_servicer import JobMethods


class _Refused(grpc.RpcError):
    def __init__(self, details: str, metadata=()):
        self._details, self._metadata = details, metadata

    def code(self):
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._metadata


def _details_md(exc: ValidationError, text: str):
    status = bad_request_status(grpc.StatusCode.INVALID_ARGUMENT, text, exc.problems)
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


def test_problems_travel_one_by_one():
    exc = ValidationError(["task: unknown task 'x'; known tasks: arc", "lora.r: 0 must be in [1, 4096]"])
    back = _translate(_Refused(str(exc), _details_md(exc, str(exc))), "trainer", "addr")
    assert isinstance(back, ValidationError) and back.problems == exc.problems


def test_without_details_the_status_text_is_the_problem_and_a_long_list_is_counted():
    assert _translate(_Refused("a: 1; b: 2"), "trainer", "addr").problems == ["a: 1; b: 2"]
    exc = ValidationError([f"field{i}: " + "x" * 900 for i in range(8)])  # more than fits
    back = _translate(_Refused("cut text", _details_md(exc, "cut text")), "trainer", "addr")
    assert back.problems[:4] == exc.problems[:4] and back.problems[-1].startswith("... and ")
    assert len(back.problems) < len(exc.problems) + 1


def test_non_finite_floats_reach_the_door_as_proto_json_spells_them():
    assert proto_json({"learning_rate": float("nan"), "lora": {"alpha": float("-inf")}, "r": [1.0]}) == \
        {"learning_rate": "NaN", "lora": {"alpha": "-Infinity"}, "r": [1.0]}


def test_a_non_finite_number_is_reported_with_the_doors_problems():
    seen = {}

    def resolve(spec, store):
        seen["spec"] = spec
        raise ValidationError(["lora.r: 0 must be in [1, 4096]"])

    request = trainer_pb2.SubmitTrainRequest(spec=train_spec_pb2.TrainSpec(
        base_model="b", dataset="arc", learning_rate=float("nan"), lora={"r": 0}))
    with pytest.raises(ValidationError) as exc:
        JobMethods(None, None).submit("train", request, resolve)
    assert exc.value.problems == ["learning_rate: must be a finite number", "lora.r: 0 must be in [1, 4096]"]
    assert "learning_rate" not in seen["spec"]  # the door saw the rest of the spec

    def missing(spec, store):
        raise NotFoundError("base_model: model 'b' not found in the models bucket")

    with pytest.raises(ValidationError) as exc:
        JobMethods(None, None).submit("train", request, missing)
    assert exc.value.problems[1].startswith("base_model: model 'b' not found")


def test_a_missing_name_is_told_what_the_bucket_holds(tmp_path):
    from services.common.storage.store import LocalStore
    from services.common.contract.validation import held
    store = LocalStore(tmp_path)
    store.ensure_buckets()
    assert held(store, "models") == " (it is empty)"
    for i in range(12):
        store.put_bytes("models", f"m{i:02d}/manifest.json", b"{}")
    store.put_bytes("models", "half/config.json", b"{}")  # not committed: not named
    assert held(store, "models") == (" (it holds: m00, m01, m02, m03, m04, m05, m06, m07, m08, m09, … 2 more; "
                                     "ftlab model list)")
