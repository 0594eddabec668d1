r"""Batched generation gives exactly what one-prompt-at-a-time greedy generation gives, on the real
tiny Qwen3 and tokenizer: the random model (every row runs to the limit, prompts of very different
lengths share a left-padded batch) and the model fine-tuned to answer in \boxed{} (rows stop early)."""
from __future__ import annotations

import pytest
import torch

from bench.bench_evaluator import load_rows, train_boxed_tiny
from services.common.torch_utils import modeling
from services.common.data import tasks
from services.evaluator import generation as G


@pytest.fixture(scope="module")
def cpu1():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _prompts(tok, n: int) -> list[str]:
    """ARC, SQuAD and OpenMath prompts interleaved: short and long in the same batches."""
    out = []
    for i in range(n):
        for task in ("arc", "squad", "openmath"):
            out.append(G.chat_prompt(tok, task, load_rows(task, n)[i]))
    return out


def _same(model_dir, n_items: int, max_new: int):
    tok = modeling.load_tokenizer(model_dir, padding_side="left")
    model = modeling.load_causal_lm(model_dir, torch.device("cpu"))
    prompts = _prompts(tok, n_items)
    one = G.generate(model, tok, prompts, max_new, batch_size=1)
    batched = G.generate(model, tok, prompts, max_new, batch_size=4)
    for a, b in zip(one, batched):
        assert (a.text, a.generated_tokens, a.stop, a.prompt_tokens, a.prompt_sha256) == \
               (b.text, b.generated_tokens, b.stop, b.prompt_tokens, b.prompt_sha256)
    return one


def test_batched_equals_one_at_a_time_random_model(tiny_model_dir, cpu1):
    gens = _same(tiny_model_dir, 3, 24)
    assert len({g.prompt_tokens for g in gens}) > 3  # really different lengths, really padded
    assert all(g.stop == "length" and g.generated_tokens == 24 for g in gens)


def test_batched_equals_one_at_a_time_with_early_stop(tiny_model_dir, tmp_path, cpu1):
    train_boxed_tiny(tiny_model_dir, tmp_path / "boxed", steps=12, task_names=("arc",), batch=4, lr=1e-2)
    gens = _same(tmp_path / "boxed", 2, 40)
    assert all(g.stop == "boxed" and tasks.answer_closed(g.text) for g in gens)
    assert all(g.generated_tokens < 40 for g in gens)  # stopped as soon as the box closed, not at the limit


def test_row_stop_fires_on_the_closing_brace_only(tiny_model_dir):
    tok = modeling.load_tokenizer(tiny_model_dir)
    ids = tok("so \\boxed{\\frac{3}{4}} and more", add_special_tokens=False)["input_ids"]
    stop = G.RowStop(tok, prompt_width=0, eos={tok.convert_tokens_to_ids("<|im_end|>")}, stop_at_boxed=True, t0=0.0)
    fired = [bool(stop(torch.tensor([ids[:k]]))[0]) for k in range(1, len(ids) + 1)]
    first = fired.index(True)
    assert tasks.answer_closed(tok.decode(ids[:first + 1])) and not tasks.answer_closed(tok.decode(ids[:first]))
    assert stop.reasons[0] == "boxed" and stop.steps[0] == first + 1
    study = G.RowStop(tok, 0, {tok.convert_tokens_to_ids("<|im_end|>")}, stop_at_boxed=False, t0=0.0)
    assert not any(bool(study(torch.tensor([ids[:k]]))[0]) for k in range(1, len(ids) + 1))
    assert bool(study(torch.tensor([ids + [tok.convert_tokens_to_ids("<|im_end|>")]]))[0])


def test_prompt_is_the_qwen3_chat_template_with_thinking_disabled(tiny_model_dir):
    tok = modeling.load_tokenizer(tiny_model_dir)
    row = load_rows("arc", 1)[0]
    prompt = G.chat_prompt(tok, "arc", row)
    assert prompt.startswith("<|im_start|>system\n" + tasks.get_task("arc").system_prompt)
    assert row["question"] in prompt
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # the empty think block: no thinking
