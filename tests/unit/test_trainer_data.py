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

    from services.common.torch_utils import modeling
    from services.common.data import tasks
    from services.trainer.recipe import encode_example
    tok = modeling.load_tokenizer(tiny_model_dir)
    rows = pd.read_parquet(next(SEED_DATA.glob("train-ai2_arc*.parquet"))).head(3).to_dict("records")
    examples = [encode_example(tok, tasks.get_task("arc"), r, 256) for r in rows]
    torch.manual_seed(0)
    return examples, AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok


def test_target_is_the_evaluators_boxed_answer_and_only_it_carries_loss(batch_and_model):
    from services.common.data import tasks
    examples, _, tok = batch_and_model
    for ex in examples:
        answer = tok.decode([t for t in ex["labels"] if t != -100])
        assert answer.startswith("\\boxed{") and tasks.parse_answer("arc", answer) in "ABCDE"
        assert ex["labels"][0] == -100 and len(ex["labels"]) == len(ex["input_ids"])


@pytest.mark.parametrize("packing,answer_only", [("mask", False), ("positions", False), (None, True),
                                                  ("positions", True), ("mask", True)])
def test_packing_and_answer_only_logits_keep_the_loss(batch_and_model, packing, answer_only):
    import torch

    from services.trainer import packed_attention
    from services.trainer.loop import collate
    examples, model, tok = batch_and_model
    with torch.no_grad():
        ref = model(**collate(examples, tok.pad_token_id)).loss
        b = collate(examples, tok.pad_token_id, packing=packing, answer_logits_only=answer_only)
        if packing == "positions":
            assert "attention_mask" not in b and packed_attention.packing_mode(model) == "positions"
        try:
            loss = model(**b).loss
        finally:
            model.set_attn_implementation("sdpa")
    if packing:
        assert b["input_ids"].shape[0] == 1 and (b["input_ids"] != tok.pad_token_id).sum() == sum(
            len(e["input_ids"]) for e in examples)  # one row, no padding
    if answer_only:
        assert b["logits_to_keep"].numel() < b["input_ids"].shape[1] / 10
    assert abs(loss.item() - ref.item()) < 1e-4, (loss.item(), ref.item())


def test_packed_attention_gives_the_masks_gradients_and_padding_stays_apart(batch_and_model):
    """Two rows (two examples, then one and its padding): the per-example attention and the
    block-diagonal mask give the same loss and gradients; the padding is one segment of its own."""
    import torch

    from services.trainer import packed_attention
    from services.trainer.loop import collate
    examples, model, tok = batch_and_model
    n1, n2, n3 = (len(e["input_ids"]) for e in examples)
    grads = {}
    for packing in ("mask", "positions"):
        b = collate(examples, tok.pad_token_id, packing=packing, max_len=n1 + n2)
        if packing == "positions":
            w = n1 + n2
            assert b["input_ids"].shape == (2, w) and n3 < w
            assert packed_attention.segments(b["position_ids"]) == [[(0, n1), (n1, w)], [(0, n3), (n3, w)]]
            packed_attention.packing_mode(model)
        model.zero_grad()
        try:
            loss = model(**b).loss
            loss.backward()
        finally:
            model.set_attn_implementation("sdpa")
        grads[packing] = (loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    model.zero_grad()
    (lm, gm), (lp, gp) = grads["mask"], grads["positions"]
    assert abs(lm - lp) < 1e-5 and ((gm - gp).norm() / gm.norm()).item() < 1e-4


def test_packing_mode_by_attention(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from services.trainer import packed_attention
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert packed_attention.packing_mode(eager) is None  # eager adds the mask: the trainer pads instead
    windowed = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_sliding_window=True, sliding_window=64)
    assert packed_attention.packing_mode(windowed) == "mask"
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert packed_attention.packing_mode(plain) == "positions"
    assert plain.config._attn_implementation == packed_attention.NAME


