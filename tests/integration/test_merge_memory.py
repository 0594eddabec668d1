"""A merge onto a second, separately loaded base (a QLoRA base dequantized; the fp32 base under bf16
frozen layers on a CPU) starts only after the trained model's weights, gradients and optimizer
states are freed: the second base takes their place instead of adding a base beside them (before,
the merge raised SmolLM2's job peak 0.42 GiB above training's: docs/BENCHMARKS.md, issue #23)."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from services.common.data import tasks
from services.common.hardware.cpu_features import cpu_has_bf16
from tests.conftest import SEED_DATA, require_shared

CFG = {"base_model": "m", "dataset": "arc", "peft_method": "lora", "gradient_checkpointing": False, "seed": 0,
       "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
       "packing": True, "max_seq_length": 512, "completion_only_loss": True, "per_device_batch_size": 4,
       "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0,
       "lr_scheduler": "constant_with_warmup", "max_grad_norm": 1.0, "optimizer": "adamw_torch",
       "logging_steps": 1, "save_steps": 0, "group_by_length": False, "world_size": 1,
       "output_name": "merge-memory", "merge_after_train": True, "checkpoint_prefix": "unused"}


class _Quiet:
    def progress(self, *a, **k): ...
    def log(self, *a, **k): ...


@pytest.mark.parametrize("setting", [
    pytest.param({"dtype": "bfloat16", "training_quant": "none"}, id="bf16-frozen-layers",
                 marks=pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")),
    pytest.param({"dtype": "auto", "training_quant": "qlora"}, id="qlora")])
def test_the_trained_model_is_freed_before_the_merge_loads_a_second_base(tiny_model_dir, tmp_path, monkeypatch,
                                                                          setting):
    require_shared()
    from services.common.torch_utils import modeling
    from services.trainer import loop
    from services.trainer.config import TrainConfig
    from services.trainer.recipe import encode_example
    built, held = [], {}
    build_model, merge_adapter = loop.build_model, modeling.merge_adapter

    def build(*a, **k):
        built.append(build_model(*a, **k))
        return built[-1]

    def merge(*a, **k):  # what the trained model still holds when the second base is loaded
        held["elements"] = sum(p.numel() for p in built[0].parameters())
        held["grads"] = sum(p.grad is not None for p in built[0].parameters())
        return merge_adapter(*a, **k)

    monkeypatch.setattr(loop, "build_model", build)
    monkeypatch.setattr(modeling, "merge_adapter", merge)
    tok = modeling.load_tokenizer(tiny_model_dir)
    rows = pd.read_parquet(next(SEED_DATA.glob("train-ai2_arc*.parquet"))).head(4).to_dict("records")
    examples = [encode_example(tok, tasks.get_task("arc"), r, 512) for r in rows]
    loop.train(TrainConfig.from_dict({**CFG, **setting}), tiny_model_dir, examples, tmp_path / "out", None, None,
               _Quiet(), 1, torch.device("cpu"))
    assert held, "no merge onto a second base ran"
    assert held == {"elements": 0, "grads": 0}, held
    assert (tmp_path / "out" / "adapter").is_dir() and list((tmp_path / "out").glob("*.safetensors"))
