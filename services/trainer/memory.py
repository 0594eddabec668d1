"""Training memory estimate, torch-free (the flows' ``--dry-run`` and the trainer's submit check
call it): parameters, gradients, optimizer states, activations and logits for a method,
precision, batch and sequence length, in GiB (as torch's memory statistics count).

The model is described by its Hugging Face ``config.json`` dict (Qwen3 / Llama-style decoder:
q/k/v/o attention projections, gate/up/down MLP); :func:`model_config_for` finds one.

What it counts, per component (bytes):
- weights: linear layers at 2 (bf16, GPU) or 4 (fp32, CPU), ~0.52 (NF4 + double-quant
  constants) or ~1 (int8); embeddings and lm_head stay in the compute dtype.
- trainable parameters: the adapter (LoRA r*(in+out) per target, DoRA + a magnitude per output,
  VeRA a d and b vector per target plus the frozen shared projections) in fp32, or every weight
  for full fine-tuning (in the weight dtype). Gradients are one copy of them.
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
from typing import Any

import yaml

GIB = 1024 ** 3
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CATALOGUE = Path(__file__).with_name("qwen3_configs.yaml")
OVERHEAD_GB = {"cuda": 0.6, "cpu": 0.75}   # CUDA context + slack; CPU: the interpreter with torch & co.
NF4_BYTES = 0.5 + 0.127 / 8               # 4 bits + double-quantized absmax (~0.127 bit/param)
ANSWER_TOKENS = 32                          # \\boxed{...} + end of turn: MCQ ~6 tokens, spans and numbers more


@lru_cache(maxsize=1)
def catalogue() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(CATALOGUE.read_text())


def model_config_for(base_model_name: str, store=None) -> dict[str, Any]:
    """The base model's config.json from storage (``models/<name>/config.json``) when there,
    else the Qwen3 catalogue entry for the size in its name (``Qwen3-8B-base`` -> 8B).
    Raises NotFoundError when neither applies."""
    from services.common.errors import NotFoundError
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


def _targets(cfg: dict[str, Any]) -> list[str]:
    t = (cfg.get("lora") or {}).get("target_modules") or ["q_proj", "k_proj", "v_proj", "o_proj"]
    return list(LINEAR) if "all-linear" in t else [m for m in t if m in LINEAR]


def estimate_training_memory(model_config: dict[str, Any], cfg: dict[str, Any]) -> dict[str, float]:
    """Peak training memory of one process, in GiB by component, plus ``total_gb``.

    ``cfg`` is the resolved train config (services.trainer.spec): peft_method, lora,
    training_quant, optimizer, per_device_batch_size, max_seq_length, gradient_checkpointing,
    packing, and ``device_type`` (cuda | cpu; default cuda). ``seq_length`` (optional) replaces
    max_seq_length by the real longest row once the data is tokenized."""
    mc = model_config
    dev = cfg.get("device_type", "cuda")
    wbytes = 2 if dev == "cuda" else 4                 # bf16 on GPU, fp32 on CPU
    quant = cfg.get("training_quant", "none")
    if quant == "qlora":
        wbytes = 2                                     # bf16 compute, bf16 embeddings and lm_head
    peft = cfg.get("peft_method", "lora")
    L, h, V = mc["num_hidden_layers"], mc["hidden_size"], mc["vocab_size"]
    shapes = _linear_shapes(mc)
    lin_per_layer = sum(i * o for i, o in shapes.values())
    hd = mc.get("head_dim") or h // mc["num_attention_heads"]
    norms_per_layer = 2 * h + 2 * hd
    embed = V * h
    head = 0 if mc.get("tie_word_embeddings", False) else V * h
    n_linear, n_other = L * lin_per_layer, L * norms_per_layer + embed + head + h
    lin_bytes = {"none": wbytes, "qlora": NF4_BYTES, "int8": 1.0}[quant]
    weights = n_linear * lin_bytes + n_other * wbytes

    # Trainable parameters and their dtype.
    r = (cfg.get("lora") or {}).get("r", 8)
    targets = _targets(cfg)
    frozen_extra = 0.0
    if peft in ("lora", "dora"):
        trainable = L * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)
        if peft == "dora":
            trainable += L * sum(shapes[t][1] for t in targets)
        tbytes = 4
    elif peft == "vera":
        trainable = L * sum(r + shapes[t][1] for t in targets)
        max_in = max(shapes[t][0] for t in targets)
        max_out = max(shapes[t][1] for t in targets)
        frozen_extra = r * (max_in + max_out) * 4      # the shared random projections (fp32)
        tbytes = 4
    else:                                               # full fine-tuning: every weight
        trainable, tbytes = n_linear + n_other, wbytes
    trainable_bytes = trainable * tbytes if peft != "none" else 0.0  # full FT: already in `weights`
    grads = trainable * tbytes
    opt = cfg.get("optimizer", "adamw_torch")
    if opt in ("adamw_8bit", "paged_adamw_8bit"):
        optim = trainable * 2.0
    elif opt == "adafactor":
        optim = trainable * tbytes * 0.05
    elif opt == "sgd":
        optim = 0.0
    else:
        optim = trainable * tbytes * 2

    # Activations: tokens of one micro-batch; at submit the worst case, batch x max_seq_length
    # (the recipe re-estimates with the measured ``micro_batch_tokens`` and ``logit_tokens``).
    seq = cfg.get("max_seq_length", 1024)
    batch = cfg.get("per_device_batch_size", 1)
    tokens = cfg.get("micro_batch_tokens") or batch * seq
    abytes = 2 if (dev == "cuda" or quant == "qlora") else 4
    q_dim, kv_dim = shapes["q_proj"][1], shapes["k_proj"][1]
    inter = mc["intermediate_size"]
    per_token_layer = 6 * h + 4 * q_dim + 4 * kv_dim + 5 * inter
    if peft != "none" and (cfg.get("lora") or {}).get("dropout", 0.05) > 0:
        per_token_layer += sum(shapes[t][0] for t in targets)   # dropout keeps a copy of each input
    if cfg.get("gradient_checkpointing"):
        act = tokens * (L * h + per_token_layer) * abytes
    else:
        act = tokens * L * per_token_layer * abytes
    if dev == "cpu":  # the CPU SDPA kernel materialises the scores (with a mask: always)
        act += L * mc["num_attention_heads"] * tokens * min(tokens, seq) * abytes
    # Logits, their fp32 upcast and the fp32 log-softmax the loss keeps. With the completion-only
    # loss the recipe computes them at the answer tokens only (ANSWER_TOKENS per example at most).
    logit_tokens = cfg.get("logit_tokens") or (
        batch * min(ANSWER_TOKENS, seq) if cfg.get("completion_only_loss", True)
        and cfg.get("answer_logits_only", True) else tokens)
    logits = logit_tokens * V * (abytes + 4 + 4)

    out = {"weights_gb": weights, "adapter_gb": trainable_bytes + frozen_extra, "gradients_gb": grads,
           "optimizer_gb": optim, "activations_gb": act, "logits_gb": logits}
    out = {k: v / GIB for k, v in out.items()}
    out["overhead_gb"] = OVERHEAD_GB.get(dev, 0.6)
    out["total_gb"] = sum(out.values())
    out["trainable_params"] = float(trainable)
    out["total_params"] = float(n_linear + n_other + (0 if peft == "none" else trainable))
    return {k: round(v, 4) if k.endswith("_gb") else v for k, v in out.items()}
