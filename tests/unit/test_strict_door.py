"""The doors are strict, by kind, over every schema (as Kubernetes' strict field validation): a
field the server does not know is refused wherever it sits (a proto field number from a newer
client, a key of a spec given as data), naming where; every numeric field has a range."""
from __future__ import annotations

import pytest

from services.common.contract.errors import ValidationError
from services.common.generated.ftlab.v1 import evaluate_spec_pb2, quantize_spec_pb2, train_spec_pb2
from services.common.rpc.job_servicer import spec_to_dict
from services.evaluator.config import EVALUATE_PARAMS
from services.quantizer.config import QUANTIZE_PARAMS
from services.trainer.config import ADAPTER_PARAMS, TRAIN_PARAMS

MESSAGES = [train_spec_pb2.TrainSpec, quantize_spec_pb2.QuantizeSpec, evaluate_spec_pb2.EvaluateSpec]
SCHEMAS = {"train": TRAIN_PARAMS + ADAPTER_PARAMS, "quantize": QUANTIZE_PARAMS, "evaluate": EVALUATE_PARAMS}
UNKNOWN = bytes([0xB8, 0x1F, 0x01])  # field 503, varint 1: no spec message defines it


def _places(cls):
    """("", the message) and ("<field>.", a message with that sub-message set) for every sub-message field."""
    yield "", cls
    for f in cls.DESCRIPTOR.fields:
        if f.message_type is not None:
            yield f.name, cls


def _with_unknown(cls, field: str):
    msg = cls()
    if not field:
        msg.MergeFromString(UNKNOWN)
        return msg, "#503"
    f = cls.DESCRIPTOR.fields_by_name[field]
    sub = (getattr(msg, field).add() if f.is_repeated else getattr(msg, field))
    sub.MergeFromString(UNKNOWN)
    return msg, f"{field}[0].#503" if f.is_repeated else f"{field}.#503"


@pytest.mark.parametrize("cls,field", [(c, f) for c in MESSAGES for f, _ in _places(c)],
                         ids=lambda x: getattr(x, "__name__", x) or "top")
def test_a_proto_field_the_server_does_not_know_is_refused(cls, field):
    msg, where = _with_unknown(cls, field)
    with pytest.raises(ValidationError) as exc:
        spec_to_dict(msg)
    assert any(p.startswith(where + ":") and "not a field" in p for p in exc.value.problems), exc.value.problems
    spec_to_dict(cls())  # and a message without one passes


def _door(service: str, store):
    from services.evaluator.config import resolve_evaluate_spec
    from services.quantizer.config import resolve_quantize_spec
    from services.trainer.config import TrainConfig
    if service == "train":
        def check(spec):
            TrainConfig.resolve({"base_model": "m", "dataset": "arc", **spec}, "cpu")
    elif service == "quantize":
        def check(spec):
            resolve_quantize_spec({"source_model": "m", "method": "bnb_int8", **spec}, store)
    else:
        def check(spec):
            resolve_evaluate_spec({"model": "m", "tasks": [{"task": "ai2_arc"}], **spec}, store)
    return check


def _unknown_specs(service: str):
    """An unknown key at the top and in every sub-block of the schema."""
    yield {"frobnicate": 1}, "frobnicate"
    for block in sorted({p.name.split(".")[0] for p in SCHEMAS[service] if "." in p.name}):
        value = [{"task": "ai2_arc", "frobnicate": 1}] if block == "tasks" else {"frobnicate": 1}
        where = f"{block}[0].frobnicate" if block == "tasks" else f"{block}.frobnicate"
        yield {block: value}, where


@pytest.mark.parametrize("service,spec,where", [(s, spec, w) for s in SCHEMAS for spec, w in _unknown_specs(s)])
def test_a_key_the_schema_does_not_know_is_refused(service, spec, where, store):
    with pytest.raises(ValidationError) as exc:
        _door(service, store)(spec)
    assert any(p.startswith(f"{where}: unknown field") for p in exc.value.problems), exc.value.problems


@pytest.mark.parametrize("param", [p for ps in SCHEMAS.values() for p in ps if p.kind in (int, float)],
                         ids=lambda p: p.name)
def test_every_numeric_field_has_a_range(param):
    assert param.lo is not None and param.hi is not None and param.lo <= param.hi


def _names(service: str):
    """Every free-text field of the schema (no choices): each names something and is checked as a name."""
    return [p for p in SCHEMAS[service] if p.kind is str and not p.choices]


@pytest.mark.parametrize("service,param", [(s, p) for s in SCHEMAS for p in _names(s)],
                         ids=lambda x: getattr(x, "name", x))
@pytest.mark.parametrize("hostile", ["../../etc/passwd", "a\x00b", "x" * 300])
def test_every_name_field_is_checked_as_a_name_with_the_field_named(service, param, hostile, store):
    head, _, key = param.name.partition(".")
    if head == "tasks":
        spec = {"tasks": [{"task": "ai2_arc", key: hostile}]}
        where = f"tasks[0].{key}"
    elif key:
        spec, where = {head: {key: hostile}}, param.name
    else:
        spec, where = {head: hostile}, param.name
    with pytest.raises(ValidationError) as exc:
        _door(service, store)(spec)
    assert any(p.startswith(f"{where}:") for p in exc.value.problems), exc.value.problems
