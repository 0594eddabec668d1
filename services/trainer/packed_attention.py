"""Attention over packed rows, one example at a time.

The trainer packs a micro-batch's examples into rows (no padding compute). Attention must not
cross examples. A block-diagonal 4-D mask does that, but SDPA then computes every row's full
``width x width`` score matrix and cannot skip the causal half: with four ~200-token examples in
an 800-token row, 4x the needed attention FLOPs, twice over. On SmolLM2 dropping it saved a
fifth of an fp32 LoRA step on this CPU and a quarter of a bf16 one (docs/BENCHMARKS.md).

This is the padding-free attention flash-attention's varlen kernels give on GPUs
(``DataCollatorWithFlattening``: examples found from ``position_ids`` restarting at 0), for any
device: ``F.scaled_dot_product_attention(is_causal=True)`` on each example's slice. It is
registered with transformers' ``AttentionInterface`` as ``ftlab_packed_sdpa``; the model then
builds no mask (the name is not in ``AttentionMaskInterface``) and passes ``position_ids`` here.
Same loss and gradients as the mask (to float rounding, tests/unit/test_trainer_data.py).
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

NAME = "ftlab_packed_sdpa"


def segments(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the ``(start, end)`` slices of its examples: an example starts where its position
    is 0 or does not follow the previous one. ``position_ids``: ``(batch, seq)`` long. On a GPU
    this copies them to the host: :func:`_segments_once` does it once per forward, not per layer."""
    pos = position_ids.detach().cpu()
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = (pos[:, 1:] == 0) | (pos[:, 1:] != pos[:, :-1] + 1)
    out = []
    for row in starts:
        s = row.nonzero().flatten().tolist()
        out.append(list(zip(s, s[1:] + [pos.shape[1]])))
    return out


_last: tuple = (None, -1, [])  # (weakref to position_ids, its version, its segments)


def _segments_once(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """:func:`segments`, computed once for the ``position_ids`` tensor every layer of one forward
    receives (the same object, unchanged: checked by identity and torch's version counter)."""
    global _last
    ref, version, segs = _last
    if ref is not None and ref() is position_ids and version == position_ids._version:
        return segs
    segs = segments(position_ids)
    _last = (weakref.ref(position_ids), position_ids._version, segs)
    return segs


def packed_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        **kwargs) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed example. ``query``: ``(batch, heads, seq, head_dim)``,
    ``key``/``value``: ``(batch, kv_heads, seq, head_dim)`` (grouped-query heads are shared by
    SDPA's ``enable_gqa``). Returns ``((batch, seq, heads, head_dim), None)`` as transformers'
    ``sdpa_attention_forward`` does. Raises ValueError without ``position_ids``, with a mask, a
    sliding window or a KV cache: this is for training on packed rows only."""
    position_ids = kwargs.get("position_ids")
    if position_ids is None or attention_mask is not None or kwargs.get("sliding_window") is not None \
            or query.shape[2] != key.shape[2]:
        raise ValueError(f"{NAME} attends within packed examples during training: it needs position_ids and no "
                         "attention mask, sliding window or KV cache")
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for b, segs in enumerate(_segments_once(position_ids)):
        outs = [F.scaled_dot_product_attention(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e],
                                               dropout_p=dropout, is_causal=e - s > 1, scale=scaling, enable_gqa=gqa)
                for s, e in segs]
        rows.append(outs[0] if len(outs) == 1 else torch.cat(outs, dim=2))
    out = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
    return out.transpose(1, 2).contiguous(), None


def packing_mode(model) -> str | None:
    """How ``model`` (a transformers model, peft-wrapped or not) keeps packed examples apart,
    for :func:`services.trainer.loop.collate`: ``"positions"`` after switching an SDPA model to
    :func:`packed_sdpa_forward` (registered here); ``"mask"`` (the block-diagonal mask) for an SDPA
    model with a sliding window; ``None`` for other attention (eager adds a mask to the scores, so
    a boolean one would be wrong): the trainer pads instead."""
    impl = model.config._attn_implementation
    if impl == NAME:
        return "positions"
    if impl != "sdpa":
        return None
    if getattr(model.config, "sliding_window", None) is not None:
        return "mask"
    from transformers import AttentionInterface
    AttentionInterface.register(NAME, packed_sdpa_forward)
    model.set_attn_implementation(NAME)
    return "positions"
