"""Training memory estimate, torch-free (the flows' ``--dry-run`` and the trainer's submit check
call it): parameters, gradients, optimizer states, activations and logits for a method,
precision, batch and sequence length, in GiB (as torch's memory statistics count).

The model is described by its Hugging Face ``config.json`` dict (Qwen3 / Llama-style decoder:
q/k/v/o attention projections, gate/up/down MLP); :func:`model_config_for` finds one.

What it counts, per component (bytes):
- weights: linear layers at 2 (bf16, GPU) or 4 (fp32, CPU), ~0.52 (NF4 + double-quant
  constants) or ~1 (int8); embeddings and lm_head stay in the compute dtype. An adapter with
  bf16 frozen layers on a CPU counts as fp32 (loaded in fp32, its frozen layers cast afterwards).
- trainable parameters: the PEFT method's formula (its plugin's ``trainable`` hook,
  services/trainer/peft/) in fp32, or every weight for full fine-tuning (in the weight dtype). Gradients are one copy of them.
- optimizer: AdamW two states per trainable parameter in its dtype; 8-bit AdamW 2 bytes;
  Adafactor ~ factored (rows + cols); SGD none.
- activations: per token per layer what autograd keeps (norm inputs/outputs, q/k/v, attention
  output, gate/up/act/product, adapter dropout copies), or only the layer input with
  gradient checkpointing (plus one layer recomputed); plus the logits (compute dtype), their fp32
  upcast and the fp32 log-softmax the loss keeps: with Qwen's 152k vocabulary the largest term for
  small models.
- overhead: CUDA context + allocator slack on GPU; the Python/torch/transformers process on CPU.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from services.trainer.peft import DEFAULT_TARGETS

if TYPE_CHECKING:
    from services.trainer.config import TrainConfig

GIB = 1024 ** 3
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CATALOGUE = Path(__file__).with_name("qwen3_configs.yaml")
# CUDA context + allocator slack; CPU: the job process with torch, transformers, peft, pandas and the
# tokenizer loaded: the tiny Qwen3 job (0.16 GiB of model, activations and logits) peaks at 0.97-1.02 GiB
# RSS (bench_trainer, torch 2.13, transformers 5.17; docs/BENCHMARKS.md)
OVERHEAD_GB = {"cuda": 0.6, "cpu": 0.85}
NF4_BYTES = 0.5 + 0.127 / 8               # 4 bits + double-quantized absmax (~0.127 bit/param)
ANSWER_TOKENS = 32                          # \\boxed{...} + end of turn: MCQ ~6 tokens, spans and numbers more


@lru_cache(maxsize=1)
def catalogue() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(CATALOGUE.read_text())


def model_config_for(base_model_name: str, store=None) -> dict[str, Any]:
    """The base model's config.json from storage (``models/<name>/config.json``) when there,
    else the Qwen3 catalogue entry for the size in its name (``Qwen3-8B-base`` -> 8B).
    Raises NotFoundError when neither applies."""
    from services.common.contract.errors import NotFoundError
    if store is not None:
        try:
            return json.loads(store.get_bytes("models", f"{base_model_name}/config.json"))
        except NotFoundError:
            pass
    m = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)B(?![a-zA-Z])", base_model_name)
    if m and m.group(1) + "B" in catalogue():
        return dict(catalogue()[m.group(1) + "B"])
    raise NotFoundError(f"no config.json for {base_model_name!r} in storage and no Qwen3 size in its name "
                        f"(known sizes: {', '.join(catalogue())})")


def _linear_shapes(mc: dict[str, Any]) -> dict[str, tuple[int, int]]:
    h, inter = mc["hidden_size"], mc["intermediate_size"]
    hd = mc.get("head_dim") or h // mc["num_attention_heads"]
    q, kv = mc["num_attention_heads"] * hd, mc.get("num_key_value_heads", mc["num_attention_heads"]) * hd
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


def _targets(cfg: "TrainConfig") -> list[str]:
    t = cfg.adapter.target_modules if cfg.adapter else DEFAULT_TARGETS
    return list(LINEAR) if "all-linear" in t else [m for m in t if m in LINEAR]


def estimate_training_memory(model_config: dict[str, Any], cfg: "TrainConfig", micro_batch_tokens: int = 0,
                             logit_tokens: int = 0) -> dict[str, float]:
    """Peak training memory of one process, in GiB by component, plus ``total_gb``,
    ``trainable_params`` and ``total_params`` (counts).

    ``cfg``: the resolved config (services/trainer/config.py); it reads peft_method (the
    registry's trainable-parameter formula), adapter, training_quant, optimizer,
    per_device_batch_size, max_seq_length, gradient_checkpointing, completion_only_loss,
    answer_logits_only, dtype and device_type (cuda | cpu). At submit the activations are the worst case,
    batch x max_seq_length tokens; the recipe re-estimates with the measured tokens of its largest
    micro-batch (``micro_batch_tokens``) and logit rows (``logit_tokens``). Raises KeyError or
    ZeroDivisionError on a config.json without the Llama-style fields."""
    mc = model_config
    dev = cfg.device_type
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and dev == "cuda")
    wbytes = 2 if bf16 else 4                          # auto: bf16 on GPU, fp32 on CPU
    quant = cfg.training_quant
    if quant == "qlora":
        wbytes = 2                                     # bf16 compute, bf16 embeddings and lm_head
    method = cfg.method
    L, h, V = mc["num_hidden_layers"], mc["hidden_size"], mc["vocab_size"]
    shapes = _linear_shapes(mc)
    lin_per_layer = sum(i * o for i, o in shapes.values())
    hd = mc.get("head_dim") or h // mc["num_attention_heads"]
    norms_per_layer = 2 * h + 2 * hd
    embed = V * h
    head = 0 if mc.get("tie_word_embeddings", False) else V * h
    n_linear, n_other = L * lin_per_layer, L * norms_per_layer + embed + head + h
    lin_bytes = {"none": wbytes, "qlora": NF4_BYTES, "int8": 1.0}[quant]
    # bf16 for an adapter on a CPU: the model is loaded in fp32 and only then are the frozen linear
    # layers cast to bf16 (services/trainer/cpu_bf16.py), so the peak is fp32's: counted as fp32
    if cfg.bf16_frozen_on_cpu(dev):
        wbytes, lin_bytes, bf16 = 4, 4, False
    weights = n_linear * lin_bytes + n_other * wbytes

    # Trainable parameters (the PEFT method's formula) and their dtype.
    targets = _targets(cfg)
    if method.full:                                     # full fine-tuning: every weight
        trainable, frozen_extra, tbytes = n_linear + n_other, 0.0, wbytes
        trainable_bytes = 0.0                           # already in `weights`
    else:                                               # adapters train in fp32
        trainable, frozen = method.trainable(shapes, targets, L, cfg.adapter)
        tbytes, frozen_extra = 4, frozen * 4
        trainable_bytes = trainable * tbytes
    grads = trainable * tbytes
    opt = cfg.optimizer
    if opt in ("adamw_8bit", "paged_adamw_8bit"):
        optim = trainable * 2.0
    elif opt == "adafactor":
        optim = trainable * tbytes * 0.05
    elif opt == "sgd":
        optim = 0.0
    else:
        optim = trainable * tbytes * 2

    # Activations: tokens of one micro-batch; at submit the worst case, batch x max_seq_length.
    seq = cfg.max_seq_length
    batch = cfg.per_device_batch_size
    tokens = micro_batch_tokens or batch * seq
    abytes = 2 if (bf16 or quant == "qlora") else 4
    q_dim, kv_dim = shapes["q_proj"][1], shapes["k_proj"][1]
    inter = mc["intermediate_size"]
    per_token_layer = 6 * h + 4 * q_dim + 4 * kv_dim + 5 * inter
    if not method.full and cfg.adapter.dropout > 0:
        per_token_layer += sum(shapes[t][0] for t in targets)   # dropout keeps a copy of each input
    if cfg.gradient_checkpointing:
        act = tokens * (L * h + per_token_layer) * abytes
    else:
        act = tokens * L * per_token_layer * abytes
    if dev == "cpu":  # the CPU SDPA kernel materialises the scores (with a mask: always)
        act += L * mc["num_attention_heads"] * tokens * min(tokens, seq) * abytes
    # Logits, their fp32 upcast and the fp32 log-softmax the loss keeps. With the completion-only
    # loss the recipe computes them at the answer tokens only (ANSWER_TOKENS per example at most).
    logit_tokens = logit_tokens or (
        batch * min(ANSWER_TOKENS, seq) if cfg.completion_only_loss and cfg.answer_logits_only else tokens)
    logits = logit_tokens * V * (abytes + 4 + 4)

    out = {"weights_gb": weights, "adapter_gb": trainable_bytes + frozen_extra, "gradients_gb": grads,
           "optimizer_gb": optim, "activations_gb": act, "logits_gb": logits}
    out = {k: v / GIB for k, v in out.items()}
    out["overhead_gb"] = OVERHEAD_GB.get(dev, 0.6)
    out["total_gb"] = sum(out.values())
    out["trainable_params"] = float(trainable)
    out["total_params"] = float(n_linear + n_other + (0 if method.full else trainable))
    return {k: round(v, 4) if k.endswith("_gb") else v for k, v in out.items()}
