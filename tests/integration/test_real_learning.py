"""Learning, shown on the real model: a short LoRA fine-tune of SmolLM2-135M-Instruct moves a
held-out metric away from the base's value, in the expected direction, with a paired test p < 0.05.

The metric is the format success rate on held-out ARC-Challenge items (the share of answers the
study's parser reads, i.e. that end in ``\\boxed{A-D}``): the base model answers in free text and
never boxes; fine-tuning on the task's boxed targets teaches it. (ARC accuracy itself stays near
chance for a 135M model.) The statistics are the evaluator's own (``stats.paired``: paired
bootstrap CI and exact McNemar test)."""
from __future__ import annotations

import pandas as pd
import pytest

from services.common.data import tasks
from tests.conftest import SEED_DATA, require_shared

STEPS, BATCH, HELD_OUT = 8, 8, 16


@pytest.mark.slow
@pytest.mark.timeout(1800)   # ~2 min on a quiet 2-core machine; 7.5 min measured under load average 20
def test_short_lora_fine_tune_changes_held_out_format_success(real_model_dir, tmp_path):
    require_shared()
    import torch
    from services.common.torch_utils import modeling
    from services.evaluator import generation, stats
    from services.trainer.config import TrainConfig
    from services.trainer.loop import train
    from services.trainer.recipe import encode_example
    task = tasks.get_task("arc")
    train_rows = pd.read_parquet(next(SEED_DATA.glob("train-ai2_arc*.parquet"))).head(STEPS * BATCH)
    test_rows = pd.read_parquet(next(SEED_DATA.glob("test-ai2_arc*.parquet"))).head(HELD_OUT)
    assert not set(train_rows.question) & set(test_rows.question)   # held out
    tok = modeling.load_tokenizer(real_model_dir)
    examples = [encode_example(tok, task, r, 512) for r in train_rows.to_dict("records")]
    cfg = {"base_model": "SmolLM2-135M-Instruct", "dataset": "arc", "training_quant": "none", "peft_method": "lora", "gradient_checkpointing": False, "seed": 0,
           "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
           "packing": True, "max_seq_length": 512, "completion_only_loss": True, "per_device_batch_size": BATCH,
           "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0,
           "lr_scheduler": "constant_with_warmup", "max_grad_norm": 1.0, "optimizer": "adamw_torch",
           "logging_steps": 1, "save_steps": 0, "group_by_length": False, "world_size": 1,
           "output_name": "learning-test", "merge_after_train": True, "checkpoint_prefix": "unused"}

    class Quiet:
        def progress(self, *a, **k): ...
        def log(self, *a, **k): ...

    out = tmp_path / "lora"
    stats_ = train(TrainConfig.from_dict(cfg), real_model_dir, examples, out, None, None, Quiet(), STEPS, torch.device("cpu"))
    curve = [p["loss"] for p in stats_["loss_curve"]]
    assert curve[-1] < curve[0]

    left = modeling.load_tokenizer(real_model_dir, padding_side="left")
    prompts = [generation.chat_prompt(left, task, r) for r in test_rows.to_dict("records")]
    golds = [tasks.gold_answer(task, r) for r in test_rows.to_dict("records")]

    def parsed(folder):
        model = modeling.load_causal_lm(folder, torch.device("cpu"), dtype=torch.float32)
        gens = generation.generate(model, left, prompts, max_new_tokens=16, batch_size=8)
        return [tasks.parse_answer(task, g.text) for g in gens]

    base, tuned = parsed(real_model_dir), parsed(out)
    result = stats.paired("mcq4", base, tuned, golds, n_resamples=1000, seed=0)["format_success_rate"]
    print(f"format success on {HELD_OUT} held-out ARC items: base {result['a']}%, LoRA {result['b']}%, "
          f"diff {result['diff']} CI {result['ci95']}, McNemar p {result['mcnemar_p']}; loss {curve}")
    assert result["diff"] > 0 and result["ci95"][0] > 0, result     # more answers in the parsed format
    assert result["mcnemar_p"] < 0.05, result
