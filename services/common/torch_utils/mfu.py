"""Model FLOPs utilisation (MFU): the FLOP/s a job's model arithmetic needed, over the machine's
*measured* matmul peak for the job's dtype and thread count (not a datasheet number, so a CPU
figure means the same thing as a GPU one: how close to the fastest matmul this machine does).

FLOPs per token follow the standard accounting of Kaplan et al. 2020, "Scaling Laws for Neural
Language Models", §2.1 (forward ≈ 2·N per token for N matmul parameters, backward ≈ twice the
forward), with PaLM's attention term (Chowdhery et al. 2022, Appendix B: 6·N + 12·L·H·Q·T per
trained token, i.e. 4·L·d_attn·T per token forward, T the context length). For adapters
(LoRA, DoRA, VeRA) and quantized bases the frozen weights get no weight gradients, so their
backward is one matmul instead of two (4·N per token: Hu et al. 2021, "LoRA", §4.1: no
gradients or optimizer states for the frozen weights), plus 6·N for the trainable adapter.
Generation costs 2·N + 4·L·d_attn·T per generated token (the forward alone). The LM head is a
matmul of hidden × vocab counted only on the rows where logits are computed (our trainer
computes them at answer tokens only; the counts are passed in).

Torch is imported inside the functions: this module stays importable without it.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def matmul_params(config: dict[str, Any]) -> dict[str, int]:
    """Matmul parameter counts of a decoder-only transformer from its HF ``config.json`` dict:
    ``body`` (attention q/k/v/o and the MLP, all layers; embeddings excluded), ``head``
    (hidden × vocab), ``layers`` and ``d_attn`` (heads × head_dim). Gated MLPs (Llama, Qwen,
    Mistral: gate/up/down) are assumed when ``hidden_act`` is SiLU-like, else two projections."""
    h = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    hd = int(config.get("head_dim") or h // heads)
    inter = int(config.get("intermediate_size") or 4 * h)
    gated = str(config.get("hidden_act", "silu")).lower() in ("silu", "swiglu", "gelu_pytorch_tanh", "gelu_new") \
        and config.get("model_type") not in ("gpt2",)
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    mlp = (3 if gated else 2) * h * inter
    return {"body": layers * (attn + mlp), "head": h * int(config["vocab_size"]), "layers": layers,
            "d_attn": heads * hd}


def training_flops(config: dict[str, Any], tokens: int, logit_rows: int, mean_context: float,
                   full: bool, trainable_params: int = 0) -> float:
    """FLOPs of ``tokens`` trained tokens (forward + backward) of which ``logit_rows`` had their
    logits computed, at mean context length ``mean_context``. ``full``: every weight trains
    (6·N); else frozen base + ``trainable_params`` adapter (4·N + 6·N_adapter)."""
    p = matmul_params(config)
    per_matmul = 6 if full else 4
    attn = 12 * p["layers"] * p["d_attn"] * mean_context
    return float(tokens * (per_matmul * p["body"] + attn + (0 if full else 6 * trainable_params))
                 + logit_rows * per_matmul * p["head"])


def generation_flops(config: dict[str, Any], prompt_tokens: int, generated_tokens: int,
                     mean_context: float) -> float:
    """FLOPs of a greedy decode: the prompt prefill (logits at its last row only) plus each
    generated token (2·N + 4·L·d_attn·T, and the head)."""
    p = matmul_params(config)
    per_token = 2 * p["body"] + 4 * p["layers"] * p["d_attn"] * mean_context
    return float((prompt_tokens + generated_tokens) * per_token + generated_tokens * 2 * p["head"])


REMEASURE_AFTER_S = 24 * 3600  # a cached peak older than this is measured again (the best one is kept)


@functools.lru_cache(maxsize=None)
def matmul_peak_gflops(dtype: str = "float32", threads: int | None = None, device: str = "cpu",
                       n: int = 2048) -> float:
    """Measured peak: the best of a few timed ``n × n @ n × n`` matmuls (2·n³ FLOPs each) in
    ``dtype`` ("float32", "bfloat16", "float16") with ``threads`` torch threads (default: the
    current setting), on ``device``. GFLOP/s, cached per process and, per machine, in
    ``<FTLAB_CACHE_DIR or ~/.cache/ftlab>/matmul_peak.json`` (a job is a fresh process: it should
    not pay a second of matmuls each time). Measuring takes about a second on CPU.

    A measurement made while other work shares the machine comes out low. So the file keeps the
    best value measured so far, and a value older than a day (``REMEASURE_AFTER_S``) is measured
    again: a low first reading does not stay the peak, and an MFU over it does not stay inflated."""
    import torch
    threads = threads or torch.get_num_threads()
    key = f"{_machine(device)}|{device}|{dtype}|{threads}|{n}"
    path = _cache_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if isinstance(entry, (int, float)):  # the file's earlier layout: a bare value, time unknown
        entry = {"gflops": float(entry), "measured_at": 0.0}
    if isinstance(entry, dict) and time.time() - entry.get("measured_at", 0.0) < REMEASURE_AFTER_S:
        return float(entry["gflops"])
    value = _measure(dtype, threads, device, n)
    best = max(value, float(entry["gflops"])) if isinstance(entry, dict) else value
    try:  # best effort: a read-only home just measures again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # another process may have written other keys meanwhile
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        known[key] = {"gflops": best, "measured_at": time.time(), "last_measured_gflops": value}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass
    return best


def _cache_file() -> Path:
    base = os.environ.get("FTLAB_CACHE_DIR") or str(Path.home() / ".cache" / "ftlab")
    return Path(base) / "matmul_peak.json"


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        import torch
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" x{os.cpu_count()}"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _measure(dtype: str, threads: int, device: str, n: int) -> float:
    import torch
    dt = getattr(torch, dtype)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n, device=device).to(dt)
        b = torch.randn(n, n, device=device).to(dt)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        torch.matmul(a, b)
        sync()
        reps = 20 if device.startswith("cuda") else 2
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.matmul(a, b)
            sync()
            best = min(best, (time.perf_counter() - t0) / reps)
        return 2 * n**3 / best / 1e9
    finally:
        torch.set_num_threads(old)


def mfu(flops: float, seconds: float, dtype: str = "float32", device: str = "cpu") -> dict[str, float]:
    """``{"achieved_gflops", "peak_gflops", "mfu"}`` (mfu a fraction, 0..1 and above 1 only if
    the model ran faster than the measured peak matmul) for ``flops`` done in ``seconds``."""
    import torch
    peak = matmul_peak_gflops(dtype, torch.get_num_threads(), device)
    achieved = flops / max(seconds, 1e-9) / 1e9
    return {"achieved_gflops": round(achieved, 2), "peak_gflops": round(peak, 2), "mfu": round(achieved / peak, 4)}
