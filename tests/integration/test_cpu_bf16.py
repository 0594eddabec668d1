"""``dtype: bfloat16`` (and ``auto`` on a CPU with native bf16) for an adapter on a CPU
(services/trainer/cpu_bf16.py): the frozen linear layers compute in bf16, the adapter, norms, head and loss stay fp32, and on the real model the loss
curve follows fp32's (bf16 weights throughout fell behind it by up to 0.13, docs/BENCHMARKS.md).

The real-model curves are the long form (`make check-bf16`, ~80 s of the suite's time before): the
suite keeps the tiny-model checks, which fail when the frozen layers stop being bf16 or the adapter,
head, norms, gradients or the merge stop being fp32 (bf16 weights throughout fail them)."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from services.common.data import tasks
from services.common.hardware.cpu_features import cpu_has_bf16
from tests.conftest import SEED_DATA, require_shared

pytestmark = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")


class _Quiet:
    def progress(self, *a, **k): ...
    def log(self, *a, **k): ...


def _cfg(dtype: str, method: str = "lora") -> dict:
    return {"base_model": "m", "dataset": "arc", "training_quant": "none", "peft_method": method,
            "gradient_checkpointing": False, "seed": 0, "dtype": dtype,
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
            "packing": True, "max_seq_length": 512, "completion_only_loss": True, "per_device_batch_size": 4,
            "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0,
            "lr_scheduler": "constant_with_warmup", "max_grad_norm": 1.0, "optimizer": "adamw_torch",
            "logging_steps": 1, "save_steps": 0, "group_by_length": False, "world_size": 1,
            "output_name": "bf16-test", "merge_after_train": True, "checkpoint_prefix": "unused"}


@pytest.mark.parametrize("method,targets", [("lora", None), ("dora", None), ("lora", ["q_proj", "lm_head"])])
def test_frozen_linears_are_bf16_and_the_adapter_head_and_norms_fp32(tiny_model_dir, method, targets):
    from services.trainer.config import TrainConfig
    from services.trainer.cpu_bf16 import Bf16FrozenLinear
    from services.trainer.loop import build_model
    cfg = _cfg("bfloat16", method)
    if targets:  # an adapter on the head too, whose weight is the tiny Qwen3's (tied) embedding table
        cfg["lora"]["target_modules"] = targets
    model = build_model(TrainConfig.from_dict(cfg), tiny_model_dir, torch.device("cpu"))
    bf16 = [m for m in model.modules() if isinstance(m, Bf16FrozenLinear)]
    plain = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert bf16 and all(m.weight.dtype == torch.bfloat16 and not m.weight.requires_grad for m in bf16)
    # what is left plain: the adapter's own layers (trainable, fp32) and the output head (fp32)
    head = model.get_output_embeddings()
    heads = {head, getattr(head, "base_layer", head)}
    assert all(m.weight.dtype == torch.float32 for m in plain)
    assert all(m.weight.requires_grad or m in heads for m in plain)
    assert model.get_input_embeddings().weight.dtype == torch.float32  # the residual stream stays fp32
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    out = model(input_ids=ids, labels=ids)
    assert out.logits.dtype == torch.float32
    out.loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)


@pytest.mark.slow
@pytest.mark.long   # make check-bf16
def test_bf16_adapter_training_follows_fp32_on_the_real_model_and_merges_in_fp32(real_model_dir, tmp_path):
    require_shared()
    from services.common.torch_utils import modeling
    from services.trainer.config import TrainConfig
    from services.trainer.loop import train
    from services.trainer.recipe import encode_example
    task = tasks.get_task("arc")
    rows = pd.read_parquet(next(SEED_DATA.glob("train-ai2_arc*.parquet"))).head(16).to_dict("records")
    tok = modeling.load_tokenizer(real_model_dir)
    examples = [encode_example(tok, task, r, 512) for r in rows]
    curves = {}
    for dtype in ("float32", "auto"):  # auto: the frozen layers in bf16 on this CPU (it has native bf16)
        stats = train(TrainConfig.from_dict(_cfg(dtype)), real_model_dir, examples, tmp_path / dtype, None, None,
                      _Quiet(), 4, torch.device("cpu"))
        curves[dtype] = [p["loss"] for p in stats["loss_curve"]]
        assert stats["dtype"] == {"float32": "float32", "auto": "bfloat16"}[dtype]
    fp32, bf16 = curves["float32"], curves["auto"]
    assert bf16[-1] < bf16[0] - 0.3, bf16   # it learns (lr 1e-3: the loss falls fast)
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.03, (fp32, bf16)
    # the adapter is merged onto the base as stored (fp32), not onto the bf16 copy it trained against
    assert _stored_dtypes(tmp_path / "auto") == {"F32"}


def _stored_dtypes(folder) -> set[str]:
    from safetensors import safe_open
    out = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            out |= {st.get_slice(k).get_dtype() for k in st.keys()}
    return out


def test_a_bf16_stored_base_is_merged_in_fp32(tiny_model_dir, tmp_path):
    """Hub models are mostly stored in bf16: merging the adapter onto the base as stored would round
    the update to bf16, so the merge loads the base in fp32."""
    require_shared()
    from transformers import AutoModelForCausalLM

    from services.common.torch_utils import modeling
    from services.trainer.config import TrainConfig
    from services.trainer.loop import train
    from services.trainer.recipe import encode_example
    base = tmp_path / "base-bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(base)
    tok = modeling.load_tokenizer(tiny_model_dir)
    tok.save_pretrained(base)
    assert _stored_dtypes(base) == {"BF16"}
    rows = pd.read_parquet(next(SEED_DATA.glob("train-ai2_arc*.parquet"))).head(4).to_dict("records")
    examples = [encode_example(tok, tasks.get_task("arc"), r, 512) for r in rows]
    train(TrainConfig.from_dict(_cfg("bfloat16")), base, examples, tmp_path / "out", None, None, _Quiet(), 1,
          torch.device("cpu"))
    assert _stored_dtypes(tmp_path / "out") == {"F32"}
