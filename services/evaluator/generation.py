r"""Batched greedy generation that gives the same answers as one prompt at a time.

- Prompts are the task's chat messages through the model's chat template, thinking disabled
  (Qwen3), exactly as the trainer formats them.
- Prompts are sorted by length before batching (less padding), padded on the left, and the
  results returned in the caller's order.
- Each row stops as soon as its ``\boxed{...}`` answer has closed, or at EOS; the batch ends when
  every row has stopped. ``RowStop`` records when each row stopped, so token counts and
  latencies are those of the row, not of the batch's slowest member.
- Left padding changes nothing a row computes: transformers derives position ids from the
  attention mask, and the padded keys are masked out. A test checks batch == one-at-a-time.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable

import torch

from services.common.data import tasks


@dataclass
class Generation:
    text: str                # decoded generated text, special tokens dropped
    prompt_tokens: int
    generated_tokens: int    # up to and including the token that stopped the row
    stop: str                # "boxed" | "eos" | "length"
    latency_s: float         # from the batch's start until this row stopped
    prompt_sha256: str


def chat_prompt(tok, task, row) -> str:
    """The task's system + user messages through the chat template, thinking disabled."""
    return tasks.render_prompt(tok, tasks.build_messages(task, row))


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def eos_ids(model, tok) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = {eos} if isinstance(eos, int) else set(eos or [])
    return ids | ({tok.eos_token_id} if tok.eos_token_id is not None else set())


class RowStop:
    r"""Stopping criterion: a row is done at EOS or once its text holds a closed ``\boxed{}``
    (``stop_at_boxed=False`` gives the study's behaviour: EOS or max_new_tokens only).
    Records each row's stop step, reason and time."""

    def __init__(self, tok, prompt_width: int, eos: set[int], stop_at_boxed: bool, t0: float):
        self.tok, self.width, self.eos, self.stop_at_boxed, self.t0 = tok, prompt_width, eos, stop_at_boxed, t0
        self.steps: dict[int, int] = {}
        self.reasons: dict[int, str] = {}
        self.times: dict[int, float] = {}

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        now = time.perf_counter() - self.t0
        step = input_ids.shape[1] - self.width
        last = input_ids[:, -1].tolist()
        for i, token in enumerate(last):
            if i in self.steps:
                continue
            reason = None
            if token in self.eos:
                reason = "eos"
            elif self.stop_at_boxed and "}" in self.tok.decode([token]):  # only a '}' can close it
                if tasks.answer_closed(self.tok.decode(input_ids[i, self.width:], skip_special_tokens=True)):
                    reason = "boxed"
            if reason:
                self.steps[i], self.reasons[i], self.times[i] = step, reason, now
        return torch.tensor([i in self.steps for i in range(len(last))], device=input_ids.device)


def generate_batch(model, tok, prompts: list[str], max_new_tokens: int, stop_at_boxed: bool = True,
                   cache: dict | None = None) -> list[Generation]:
    """Greedy generation for one batch of prompt strings (left padding, KV cache; ``cache``: extra
    ``generate`` arguments choosing the cache, e.g. a quantized one, see ``kv_cache.py``)."""
    dev = model.device
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
    width = enc["input_ids"].shape[1]
    eos = eos_ids(model, tok)
    t0 = time.perf_counter()
    stop = RowStop(tok, width, eos, stop_at_boxed, t0)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, top_p=None, top_k=None,
                             temperature=None, stopping_criteria=[stop], pad_token_id=tok.pad_token_id,
                             eos_token_id=sorted(eos), use_cache=True, **(cache or {}))
    total = time.perf_counter() - t0
    results = []
    for i, prompt in enumerate(prompts):
        gen = out[i, width:].tolist()
        n = stop.steps.get(i, len(gen))
        results.append(Generation(
            text=tok.decode(gen[:n], skip_special_tokens=True), prompt_tokens=int(enc["attention_mask"][i].sum()),
            generated_tokens=n, stop=stop.reasons.get(i, "length"), latency_s=stop.times.get(i, total),
            prompt_sha256=prompt_hash(prompt)))
    return results


def generate(model, tok, prompts: list[str], max_new_tokens: int, batch_size: int, stop_at_boxed: bool = True,
             on_batch: Callable[[list[int], list[Generation]], None] | None = None,
             cache: dict | None = None) -> list[Generation]:
    """All prompts, longest first in batches of ``batch_size``; results in the input order.
    ``on_batch(indices, generations)`` is called after each batch (progress reporting)."""
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        gens = generate_batch(model, tok, [prompts[i] for i in idx], max_new_tokens, stop_at_boxed, cache)
        for i, g in zip(idx, gens):
            results[i] = g
        if on_batch:
            on_batch(idx, gens)
    return results  # type: ignore[return-value]


# Quantizations whose matmuls pick work by the whole batch: bitsandbytes LLM.int8 keeps the input
# columns holding any |value| > threshold *anywhere in the batch* in 16-bit and the rest in int8,
# so a row's logits depend on its companions (INT8 PTQ, and INT8-trained adapters on their base).
BATCH_DEPENDENT = {"INT8"}
WEIGHT_ONLY_4BIT = {"BNB4BIT", "BNB4BIT_FP4", "QLORA", "W4A16_GPTQ", "W4A16_RTN"}


def batch_composition(quantization: dict, batch_size: int) -> dict:
    """What metrics.json records about batching (issue 14): whether this model's answers can
    depend on which prompts shared its batches, why, and the exact mode (``batch_size: 1``).
    ``effect``: ``none`` (batch_size 1: each prompt alone), ``int8_outlier_columns`` (LLM.int8:
    measured on SmolLM2-135M-Instruct, see docs/EVALUATOR.md), or ``float_rounding`` (other
    matmul shapes round differently; rarely flips a near-tie greedy token)."""
    method = (quantization or {}).get("method", "NoQuant")
    if batch_size == 1:
        effect = "none"
    elif method in BATCH_DEPENDENT:
        effect = "int8_outlier_columns"
    else:
        effect = "float_rounding"
    notes = {"none": "each prompt generated alone: outputs do not depend on other prompts",
             "int8_outlier_columns": "bitsandbytes LLM.int8 chooses outlier columns per batch, so batch "
                                     "composition can change this model's outputs (docs/EVALUATOR.md gives "
                                     "the measured rate); batch_size: 1 is exact",
             "float_rounding": "batched matmuls round differently from single ones; greedy outputs can "
                               "differ where two tokens nearly tie" + (" (4-bit weights: see docs/EVALUATOR.md)"
                                                                      if method in WEIGHT_ONLY_4BIT else "")
                               + "; batch_size: 1 is exact"}
    return {"batch_size": batch_size, "exact": batch_size == 1, "quant_method": method,
            "outputs_may_depend_on_batch": effect != "none", "effect": effect, "note": notes[effect],
            "exact_mode": {"batch_size": 1}}
