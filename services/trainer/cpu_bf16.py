"""bf16 adapter training on a CPU: the frozen base's linear layers compute in bf16, everything
else stays fp32.

Most of an adapter step's FLOPs are matmuls with frozen weights (forward, and the input gradient
backward). Those run on the CPU's bf16 units here (AVX512-BF16/AMX: about 2.2x the fp32 matmul
peak on the dev machine), each layer's output cast back to fp32. The residual stream, norms,
attention, the adapter (peft's LoRA/DoRA/VeRA weights), the output head and the loss stay fp32.

Why not bf16 weights throughout (``model.to(bfloat16)``)? That was measured: just as fast, but the
loss curve fell behind fp32's by up to 0.13 over 8 steps. peft adds each adapter's fp32 update to
the base layer's output and casts the sum back to that output's dtype. In bf16, with an 8-bit
mantissa, a small early update mostly rounds away. Here the base output is fp32 before the update
is added (docs/BENCHMARKS.md has both curves).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class Bf16FrozenLinear(torch.nn.Linear):
    """A frozen ``nn.Linear`` whose weight (and bias) are stored in bf16: input cast to bf16, matmul
    in bf16 (fp32 accumulation in oneDNN), output cast back to the input's dtype. Shapes as
    ``nn.Linear``: ``(..., in_features) -> (..., out_features)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)


def frozen_linears_to_bf16(model: torch.nn.Module) -> int:
    """Turn every frozen plain ``nn.Linear`` of a peft-wrapped fp32 model into a
    :class:`Bf16FrozenLinear` in place. Call it after ``get_peft_model`` (peft then has frozen the
    base and made its adapter layers fp32). Left fp32: the output head (the loss reads its logits;
    also when an adapter targets it) and any weight another module shares (tied embeddings: the
    head's weight is the embedding table, which feeds the fp32 residual stream). Returns how many
    layers were converted."""
    head = model.get_output_embeddings()
    heads = {id(head)}
    if hasattr(head, "get_base_layer"):   # an adapter on the head: peft's wrapper around it
        heads.add(id(head.get_base_layer()))
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    n = 0
    for module in model.modules():
        if (type(module) is not torch.nn.Linear or id(module) in heads or module.weight.requires_grad
                or uses[id(module.weight)] > 1):
            continue
        module.weight.data = module.weight.data.to(torch.bfloat16)
        if module.bias is not None:
            module.bias.data = module.bias.data.to(torch.bfloat16)
        module.__class__ = Bf16FrozenLinear
        n += 1
    return n
