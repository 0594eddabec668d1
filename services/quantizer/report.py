"""The quality-and-size report of one quantized model against its source (torch side; runs in the
job's child process). Everything is measured on the models as ``modeling.load_causal_lm`` loads them
— what the evaluator and a user get — not on the quantizer's in-memory copy."""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from services.quantizer.config import QuantizeConfig

# Layers after a norm whose weights SmoothQuant rescales (the norm absorbs 1/s): compare them as
# composed with that norm, or the smoothing itself would read as reconstruction error.
_NORM_BEFORE = {"self_attn.q_proj": "input_layernorm", "self_attn.k_proj": "input_layernorm",
                "self_attn.v_proj": "input_layernorm", "mlp.gate_proj": "post_attention_layernorm",
                "mlp.up_proj": "post_attention_layernorm"}


# ----------------------------------------------------------------------------- size


def safetensors_tensor_bytes(folder: Path) -> dict[str, int]:
    """Tensor name -> stored bytes, read from the safetensors headers (no weights loaded)."""
    out: dict[str, int] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                out[name] = meta["data_offsets"][1] - meta["data_offsets"][0]
    return out


def size_report(src_dir: Path, out_dir: Path, layers: list[str], src_model, q_model) -> dict[str, Any]:
    """Disk, loaded weight memory and the quantized layers' own bytes, each with its ratio."""
    src_t, q_t = safetensors_tensor_bytes(src_dir), safetensors_tensor_bytes(out_dir)

    def layer_bytes(tensors: dict[str, int]) -> int:
        return sum(b for name, b in tensors.items() if any(name.startswith(layer + ".") for layer in layers))

    def disk(folder: Path) -> int:
        return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))

    pairs = {"disk_bytes": (disk(src_dir), disk(out_dir)),
             "weight_memory_bytes": (src_model.get_memory_footprint(), q_model.get_memory_footprint()),
             "quantized_layers_bytes": (layer_bytes(src_t), layer_bytes(q_t))}
    out: dict[str, Any] = {}
    for key, (s, q) in pairs.items():
        out[key] = {"source": s, "quantized": q, "ratio": round(q / s, 4) if s else None}
    out["size_ratio"] = out["disk_bytes"]["ratio"]
    return out


# ----------------------------------------------------------------------------- weights


def quantizable_linears(model) -> dict[str, torch.nn.Module]:
    """The decoder's linear layers (lm_head and embeddings stay in full precision by every method)."""
    return {name: mod for name, mod in model.named_modules()
            if hasattr(mod, "in_features") and hasattr(mod, "out_features") and ".layers." in f".{name}"}


@torch.no_grad()
def effective_weight(module, dtype: torch.dtype, device: torch.device, chunk: int = 2048) -> torch.Tensor:
    """The weight a layer actually computes with, whatever its format (bitsandbytes, compressed-
    tensors, plain): its response to one-hot inputs (bias removed). One-hot rows quantize exactly
    under per-token activation quantization, so W8A8 layers give their dequantized weight too."""
    zero = module(torch.zeros(1, module.in_features, dtype=dtype, device=device)).float()
    cols = []
    for start in range(0, module.in_features, chunk):
        stop = min(start + chunk, module.in_features)
        eye = torch.zeros(stop - start, module.in_features, dtype=dtype, device=device)
        eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
        cols.append((module(eye).float() - zero).T)
    return torch.cat(cols, dim=1)  # [out_features, in_features]


@torch.no_grad()
def weight_errors(src_model, q_model, dtype: torch.dtype, device: torch.device) -> list[dict[str, Any]]:
    """Per layer: relative Frobenius error ||W_q - W|| / ||W|| and the largest absolute error."""
    for model in (src_model, q_model):  # a first forward lets compressed-tensors decompress its layers
        model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
    src_mods, q_mods = quantizable_linears(src_model), quantizable_linears(q_model)
    src_named = dict(src_model.named_modules())
    q_named = dict(q_model.named_modules())
    rows = []
    for name, q_mod in q_mods.items():
        src_mod = src_mods.get(name)
        if src_mod is None:
            continue
        w_src = effective_weight(src_mod, dtype, device)
        w_q = effective_weight(q_mod, dtype, device)
        with_norm = False
        suffix = ".".join(name.split(".")[-2:])
        if suffix in _NORM_BEFORE:
            norm = name.rsplit(".", 2)[0] + "." + _NORM_BEFORE[suffix]
            g_src, g_q = getattr(src_named.get(norm), "weight", None), getattr(q_named.get(norm), "weight", None)
            if g_src is not None and g_q is not None and not torch.equal(g_src.float().cpu(), g_q.float().cpu()):
                w_src, w_q = w_src * g_src.float().to(w_src.device), w_q * g_q.float().to(w_q.device)
                with_norm = True  # SmoothQuant moved scales between the norm and this layer
        diff = w_q - w_src
        rows.append({"layer": name, "shape": list(w_src.shape),
                     "rel_error": round(float(diff.norm() / w_src.norm().clamp_min(1e-12)), 6),
                     "max_abs_error": round(float(diff.abs().max()), 6), "compared_with_norm": with_norm})
    return rows


# ----------------------------------------------------------------------------- activations


@torch.no_grad()
def activation_outliers(model, tok, texts: list[str], max_len: int, device: torch.device,
                        threshold: float = 6.0) -> list[dict[str, Any]]:
    """Per linear layer input: per-channel max |x| over every token of ``texts``; the max, median and
    their ratio (outlier channels are what SmoothQuant and LLM.int8 exist for), the top channels
    and how many exceed LLM.int8's default outlier threshold."""
    absmax: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_module, inputs, _output):
            x = inputs[0].detach().float().abs().reshape(-1, inputs[0].shape[-1]).amax(dim=0)
            absmax[name] = torch.maximum(absmax[name], x) if name in absmax else x
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in quantizable_linears(model).items()]
    try:
        for text in texts:
            ids = tok(text, return_tensors="pt", add_special_tokens=False, truncation=True, max_length=max_len)
            model(input_ids=ids["input_ids"].to(device))
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name, a in absmax.items():
        med = float(a.median())
        top = torch.topk(a, k=min(3, a.numel()))
        rows.append({"layer": name, "channels": a.numel(), "max": round(float(a.max()), 6),
                     "median": round(med, 6), "max_over_median": round(float(a.max()) / med, 3) if med > 0 else None,
                     "top_channels": top.indices.tolist(), "channels_over_threshold": int((a > threshold).sum()),
                     "threshold": threshold})
    return rows


# ----------------------------------------------------------------------------- outputs


@torch.no_grad()
def quality(src_model, q_model, tok, texts: list[str], max_len: int, device: torch.device) -> dict[str, Any]:
    """Next-token distributions of the quantized model vs the source, teacher-forced on held-out
    texts: mean KL(source || quantized), top-1 agreement, and each model's perplexity."""
    kl_sum = agree = tokens = 0.0
    nll_src = nll_q = 0.0
    kl_max = 0.0
    for text in texts:
        ids = tok(text, return_tensors="pt", add_special_tokens=False, truncation=True,
                  max_length=max_len)["input_ids"].to(device)
        lp_s = torch.log_softmax(src_model(input_ids=ids).logits[0].float(), dim=-1)
        lp_q = torch.log_softmax(q_model(input_ids=ids).logits[0].float(), dim=-1)
        kl = (lp_s.exp() * (lp_s - lp_q)).sum(-1)
        kl_sum += float(kl.sum())
        kl_max = max(kl_max, float(kl.max()))
        agree += float((lp_s.argmax(-1) == lp_q.argmax(-1)).sum())
        tokens += ids.shape[1]
        target = ids[0, 1:]
        nll_src -= float(lp_s[:-1].gather(1, target[:, None]).sum())
        nll_q -= float(lp_q[:-1].gather(1, target[:, None]).sum())
    if not tokens:
        return {"skipped": "no held-out prompts"}
    predicted = tokens - len(texts)
    ppl_s, ppl_q = math.exp(nll_src / predicted), math.exp(nll_q / predicted)
    return {"prompts": len(texts), "tokens": int(tokens), "kl_mean": kl_sum / tokens, "kl_max": kl_max,
            "top1_agreement": agree / tokens, "ppl_source": ppl_s, "ppl_quantized": ppl_q,
            "ppl_delta": ppl_q - ppl_s, "ppl_delta_rel": (ppl_q - ppl_s) / ppl_s}


def summarize_errors(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {}
    errs = [r["rel_error"] for r in rows]
    worst = max(rows, key=lambda r: r["rel_error"])
    return {"layers": len(rows), "rel_error_mean": sum(errs) / len(errs), "rel_error_max": worst["rel_error"],
            "worst_layer": worst["layer"]}


def summarize_outliers(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [r["max_over_median"] for r in rows if r["max_over_median"] is not None]
    if not ratios:
        return {}
    worst = max(rows, key=lambda r: r["max_over_median"] or 0)
    return {"layers": len(rows), "max_over_median_max": max(ratios), "worst_layer": worst["layer"],
            "layers_with_channels_over_threshold": sum(1 for r in rows if r["channels_over_threshold"])}


# The degradation table's columns measured by the quantizer (the evaluator adds task scores and
# speed; flows/report_ptq.py joins them). One row per quantized model.
DEGRADATION_COLUMNS = ["method", "quant_tag", "backend", "disk_ratio", "memory_ratio", "disk_bytes", "memory_bytes",
                       "kl_mean", "top1_agreement", "ppl_source", "ppl_quantized", "ppl_delta"]


def degradation_row(cfg: QuantizeConfig, size: dict[str, Any], qual: dict[str, Any]) -> dict[str, Any]:
    """This model against its unquantized source: size on disk and in memory (bytes and ratio
    quantized/source), and the teacher-forced quality numbers (None when quality was skipped)."""
    return {"method": cfg.method, "quant_tag": cfg.quant_tag, "backend": cfg.backend,
            "disk_ratio": size["disk_bytes"]["ratio"], "memory_ratio": size["weight_memory_bytes"]["ratio"],
            "disk_bytes": size["disk_bytes"]["quantized"], "memory_bytes": size["weight_memory_bytes"]["quantized"],
            **{k: qual.get(k) for k in ("kl_mean", "top1_agreement", "ppl_source", "ppl_quantized", "ppl_delta")}}
