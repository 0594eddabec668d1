from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class QuantizeSpec(_message.Message):
    __slots__ = ("source_model", "method", "output_name", "llm_int8_threshold")
    SOURCE_MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    LLM_INT8_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    source_model: str
    method: str
    output_name: str
    llm_int8_threshold: float
    def __init__(self, source_model: _Optional[str] = ..., method: _Optional[str] = ..., output_name: _Optional[str] = ..., llm_int8_threshold: _Optional[float] = ...) -> None: ...
