"""The training batch: packing and answer-only logits change the cost of a step, never its loss
(the real tiny Qwen3, the real tokenizer, the shared ARC task)."""
from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import SEED_DATA


@pytest.fixture(scope="module")
def batch_and_model(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from services.common import modeling, tasks
    from services.trainer.recipe import encode_example
    tok = modeling.load_tokenizer(tiny_model_dir)
    rows = pd.read_parquet(next(SEED_DATA.glob("train-ai2_arc*.parquet"))).head(3).to_dict("records")
    examples = [encode_example(tok, tasks.get_task("arc"), r, 256) for r in rows]
    torch.manual_seed(0)
    return examples, AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok


def test_target_is_the_evaluators_boxed_answer_and_only_it_carries_loss(batch_and_model):
    from services.common import tasks
    examples, _, tok = batch_and_model
    for ex in examples:
        answer = tok.decode([t for t in ex["labels"] if t != -100])
        assert answer.startswith("\\boxed{") and tasks.parse_answer("arc", answer) in "ABCDE"
        assert ex["labels"][0] == -100 and len(ex["labels"]) == len(ex["input_ids"])


@pytest.mark.parametrize("packing,answer_only", [(True, False), (False, True), (True, True)])
def test_packing_and_answer_only_logits_keep_the_loss(batch_and_model, packing, answer_only):
    import torch

    from services.trainer.loop import collate
    examples, model, tok = batch_and_model
    with torch.no_grad():
        ref = model(**collate(examples, tok.pad_token_id)).loss
        b = collate(examples, tok.pad_token_id, packing=packing, answer_logits_only=answer_only)
        loss = model(**b).loss
    if packing:
        assert b["input_ids"].shape[0] == 1 and (b["input_ids"] != tok.pad_token_id).sum() == sum(
            len(e["input_ids"]) for e in examples)  # one row, no padding
    if answer_only:
        assert b["logits_to_keep"].numel() < b["input_ids"].shape[1] / 10
    assert abs(loss.item() - ref.item()) < 1e-4, (loss.item(), ref.item())
