from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QuantizeSpec(_message.Message):
    __slots__ = ("source_model", "method", "output_name", "llm_int8_threshold", "weights_bits", "bnb_4bit_quant_type", "double_quant", "compute_dtype", "algorithm", "smoothing_strength", "group_size", "dataset", "calibration", "report")
    SOURCE_MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    LLM_INT8_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_BITS_FIELD_NUMBER: _ClassVar[int]
    BNB_4BIT_QUANT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_QUANT_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    source_model: str
    method: str
    output_name: str
    llm_int8_threshold: float
    weights_bits: int
    bnb_4bit_quant_type: str
    double_quant: bool
    compute_dtype: str
    algorithm: str
    smoothing_strength: float
    group_size: int
    dataset: str
    calibration: CalibrationSpec
    report: ReportSpec
    def __init__(self, source_model: _Optional[str] = ..., method: _Optional[str] = ..., output_name: _Optional[str] = ..., llm_int8_threshold: _Optional[float] = ..., weights_bits: _Optional[int] = ..., bnb_4bit_quant_type: _Optional[str] = ..., double_quant: _Optional[bool] = ..., compute_dtype: _Optional[str] = ..., algorithm: _Optional[str] = ..., smoothing_strength: _Optional[float] = ..., group_size: _Optional[int] = ..., dataset: _Optional[str] = ..., calibration: _Optional[_Union[CalibrationSpec, _Mapping]] = ..., report: _Optional[_Union[ReportSpec, _Mapping]] = ...) -> None: ...

class CalibrationSpec(_message.Message):
    __slots__ = ("split", "num_samples", "seed", "max_seq_length")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    split: str
    num_samples: int
    seed: int
    max_seq_length: int
    def __init__(self, split: _Optional[str] = ..., num_samples: _Optional[int] = ..., seed: _Optional[int] = ..., max_seq_length: _Optional[int] = ...) -> None: ...

class ReportSpec(_message.Message):
    __slots__ = ("split", "num_prompts", "max_seq_length")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    split: str
    num_prompts: int
    max_seq_length: int
    def __init__(self, split: _Optional[str] = ..., num_prompts: _Optional[int] = ..., max_seq_length: _Optional[int] = ...) -> None: ...
