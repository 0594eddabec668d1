from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainSpec(_message.Message):
    __slots__ = ("base_model", "dataset", "task", "output_name", "peft_method", "lora", "training_quant", "max_steps", "num_train_epochs", "per_device_batch_size", "gradient_accumulation_steps", "learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm", "max_seq_length", "seed", "merge_after_train", "train_limit", "gradient_checkpointing", "save_steps", "resume", "optimizer", "packing", "group_by_length", "completion_only_loss", "lr_scheduler", "world_size", "logging_steps", "dtype")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    PEFT_METHOD_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    TRAINING_QUANT_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    NUM_TRAIN_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    PER_DEVICE_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MERGE_AFTER_TRAIN_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LIMIT_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    SAVE_STEPS_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_ONLY_LOSS_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    LOGGING_STEPS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    dataset: str
    task: str
    output_name: str
    peft_method: str
    lora: _struct_pb2.Struct
    training_quant: str
    max_steps: int
    num_train_epochs: float
    per_device_batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    weight_decay: float
    warmup_ratio: float
    max_grad_norm: float
    max_seq_length: int
    seed: int
    merge_after_train: bool
    train_limit: int
    gradient_checkpointing: bool
    save_steps: int
    resume: str
    optimizer: str
    packing: bool
    group_by_length: bool
    completion_only_loss: bool
    lr_scheduler: str
    world_size: int
    logging_steps: int
    dtype: str
    def __init__(self, base_model: _Optional[str] = ..., dataset: _Optional[str] = ..., task: _Optional[str] = ..., output_name: _Optional[str] = ..., peft_method: _Optional[str] = ..., lora: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., training_quant: _Optional[str] = ..., max_steps: _Optional[int] = ..., num_train_epochs: _Optional[float] = ..., per_device_batch_size: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ..., learning_rate: _Optional[float] = ..., weight_decay: _Optional[float] = ..., warmup_ratio: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., max_seq_length: _Optional[int] = ..., seed: _Optional[int] = ..., merge_after_train: _Optional[bool] = ..., train_limit: _Optional[int] = ..., gradient_checkpointing: _Optional[bool] = ..., save_steps: _Optional[int] = ..., resume: _Optional[str] = ..., optimizer: _Optional[str] = ..., packing: _Optional[bool] = ..., group_by_length: _Optional[bool] = ..., completion_only_loss: _Optional[bool] = ..., lr_scheduler: _Optional[str] = ..., world_size: _Optional[int] = ..., logging_steps: _Optional[int] = ..., dtype: _Optional[str] = ...) -> None: ...
