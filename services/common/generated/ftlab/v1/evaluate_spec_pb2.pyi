from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EvalTask(_message.Message):
    __slots__ = ("task", "dataset", "split", "limit")
    TASK_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    task: str
    dataset: str
    split: str
    limit: int
    def __init__(self, task: _Optional[str] = ..., dataset: _Optional[str] = ..., split: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class EvaluateSpec(_message.Message):
    __slots__ = ("model", "tasks", "batch_size", "max_new_tokens", "seed", "eval_id", "bootstrap_samples", "kv_cache_dtype", "engine", "engine_check", "dtype")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EVAL_ID_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_CHECK_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    model: str
    tasks: _containers.RepeatedCompositeFieldContainer[EvalTask]
    batch_size: int
    max_new_tokens: int
    seed: int
    eval_id: str
    bootstrap_samples: int
    kv_cache_dtype: str
    engine: str
    engine_check: int
    dtype: str
    def __init__(self, model: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[EvalTask, _Mapping]]] = ..., batch_size: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., seed: _Optional[int] = ..., eval_id: _Optional[str] = ..., bootstrap_samples: _Optional[int] = ..., kv_cache_dtype: _Optional[str] = ..., engine: _Optional[str] = ..., engine_check: _Optional[int] = ..., dtype: _Optional[str] = ...) -> None: ...
