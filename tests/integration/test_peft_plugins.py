"""The PEFT plugins added as one file each (services/trainer/peft/rslora.py, lora_plus.py,
pissa.py), trained for real on the tiny Qwen3 through the training loop: rsLoRA's scaling, LoRA+'s
optimizer groups, and PiSSA's adapter converted at save so that the ORIGINAL base plus the saved
adapter is the trained model."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from services.common.data import tasks
from tests.conftest import SEED_DATA

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


class _Quiet:
    def progress(self, *a, **k): ...
    def log(self, *a, **k): ...


def _cfg(method: str, **lora) -> dict:
    return {"base_model": "m", "dataset": "arc", "peft_method": method, "seed": 0, "dtype": "float32",
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": TARGETS, **lora},
            "max_seq_length": 256, "per_device_batch_size": 4, "gradient_accumulation_steps": 1,
            "learning_rate": 5e-3, "warmup_ratio": 0.0, "lr_scheduler": "constant_with_warmup", "save_steps": 0,
            "output_name": f"{method}-test", "merge_after_train": True, "checkpoint_prefix": "unused"}


@pytest.fixture(scope="module")
def examples(tiny_model_dir):
    from services.common.torch_utils import modeling
    from services.trainer.recipe import encode_example
    task = tasks.get_task("arc")
    rows = pd.read_parquet(next(SEED_DATA.glob("train-ai2_arc*.parquet"))).head(8).to_dict("records")
    tok = modeling.load_tokenizer(tiny_model_dir)
    return [encode_example(tok, task, r, 256) for r in rows]


def _train(cfg: dict, base, examples, out, steps: int = 3):
    from services.trainer.config import TrainConfig
    from services.trainer.loop import train
    return train(TrainConfig.from_dict(cfg), base, examples, out, None, None, _Quiet(), steps, torch.device("cpu"))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_pissa_saves_an_adapter_for_the_original_base(tiny_model_dir, examples, tmp_path):
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM
    stats = _train(_cfg("pissa"), tiny_model_dir, examples, tmp_path / "out")
    assert stats["loss_curve"][-1]["loss"] < stats["loss_curve"][0]["loss"]
    adapter = tmp_path / "out" / "adapter"
    ids = torch.tensor([examples[0]["input_ids"][:64]])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = _logits(original, ids)
    # as every consumer applies an adapter (vLLM's LoRA, a merge): its weights onto the base as it is,
    # no initialisation re-run (peft itself would redo PiSSA's SVD for an unconverted adapter)
    plain = LoraConfig.from_pretrained(adapter)
    plain.init_lora_weights = True
    applied = PeftModel.from_pretrained(original, adapter, config=plain)
    want = _logits(merged, ids)
    assert (want - before).abs().max() > 1e-3                   # training changed the function
    assert torch.allclose(_logits(applied, ids), want, atol=2e-4), (_logits(applied, ids) - want).abs().max()
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True  # converted: a plain LoRA of rank 2r


@pytest.mark.parametrize("training_quant", ["qlora", "int8"])
def test_pissa_cannot_start_on_a_quantized_base(tiny_model_dir, tmp_path, training_quant):
    """Why the door refuses pissa with training_quant (peft/pissa.py's spec_problems): the loop itself,
    given the config past the door, cannot build it (peft's SVD needs the float weight)."""
    from services.common.contract.errors import ValidationError
    from services.trainer.config import TrainConfig
    from services.trainer.loop import build_model
    spec = {**_cfg("pissa"), "training_quant": training_quant}
    spec.pop("dtype")
    with pytest.raises(ValidationError, match="PiSSA's SVD initialisation"):
        TrainConfig.resolve({k: v for k, v in spec.items() if k not in ("checkpoint_prefix",)}, "cpu")
    with pytest.raises(TypeError, match="Please initialize PiSSA under float32"):
        build_model(TrainConfig.from_dict(spec), tiny_model_dir, torch.device("cpu"), tmp_path)


def test_rslora_scales_by_the_square_root_of_r(tiny_model_dir, examples, tmp_path):
    from services.trainer.config import TrainConfig
    from services.trainer.loop import build_model
    model = build_model(TrainConfig.from_dict(_cfg("rslora", r=16, alpha=8)), tiny_model_dir, torch.device("cpu"))
    layer = next(m for m in model.modules() if isinstance(getattr(m, "scaling", None), dict))
    assert layer.scaling["default"] == pytest.approx(8 / 16 ** 0.5)
    _train(_cfg("rslora", r=16, alpha=8), tiny_model_dir, examples, tmp_path / "out", steps=1)
    assert json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())["use_rslora"] is True


def test_lora_plus_gives_b_its_own_learning_rate(tiny_model_dir, examples, tmp_path):
    from transformers import TrainingArguments

    from services.trainer.config import TrainConfig
    from services.trainer.loop import build_model
    cfg = TrainConfig.from_dict(_cfg("lora_plus", loraplus_lr_ratio=8.0))
    model = build_model(cfg, tiny_model_dir, torch.device("cpu"))
    args = TrainingArguments(output_dir=str(tmp_path / "t"), learning_rate=cfg.learning_rate, use_cpu=True,
                             report_to=[])
    opt = cfg.method.optimizer(model, args, cfg.adapter)
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {("lora_B" in names[id(p)]): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs == {False: cfg.learning_rate, True: cfg.learning_rate * 8.0}
    stats = _train(_cfg("lora_plus", loraplus_lr_ratio=8.0), tiny_model_dir, examples, tmp_path / "out")
    assert stats["loss_curve"][-1]["loss"] < stats["loss_curve"][0]["loss"]
