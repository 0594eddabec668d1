from services.common.generated.ftlab.v1 import jobs_pb2 as _jobs_pb2
from services.common.generated.ftlab.v1 import quantize_spec_pb2 as _quantize_spec_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitQuantizeRequest(_message.Message):
    __slots__ = ("spec", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: _quantize_spec_pb2.QuantizeSpec
    request_id: str
    def __init__(self, spec: _Optional[_Union[_quantize_spec_pb2.QuantizeSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...
