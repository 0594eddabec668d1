"""llm-compressor's oneshot, the quantize step of every method whose plugin
(services/quantizer/ptq/) gives a recipe of modifiers: the source loaded, the group size checked
against the real modules, the calibration texts tokenized, the result saved compressed
(compressed-tensors)."""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Callable

import torch

from services.common.torch_utils import modeling
from services.quantizer import report


def weights(bits: int, group_size: int, symmetric: bool = True, strategy: str = "group"):
    """Weight-only int quantization of every decoder Linear (lm_head stays in full precision)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy=strategy,
                            group_size=group_size if strategy == "group" else None)
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=args)}


def quantizer(recipe: Callable[[Any], list]):
    """The plugin's quantize hook for a ``recipe(cfg) -> [modifiers]``."""
    def quantize(ctx, cfg, src_dir: Path, out: Path, tok, calib: list[str], dev, dtype: torch.dtype) -> None:
        run(ctx, cfg, src_dir, out, tok, calib, dtype, recipe(cfg))
    return quantize


def run(ctx, cfg, src_dir: Path, out: Path, tok, calib: list[str], dtype: torch.dtype, modifiers: list) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    o = cfg.options
    model = AutoModelForCausalLM.from_pretrained(src_dir, dtype=dtype)
    if "group_size" in o:
        bad = [f"{n} (in_features {m.in_features})" for n, m in report.quantizable_linears(model).items()
               if m.in_features % o["group_size"]]
        if bad:  # the door checks Llama/Qwen configs; this catches every other architecture
            raise ValueError(f"group_size: {o['group_size']} does not divide the in-features of {', '.join(bad)}")
    if modeling.device().type == "cpu":  # no CUDA: pinned memory would fail
        _no_pinned_memory()
    ctx.log(f"llm-compressor oneshot: {', '.join(type(m).__name__ for m in modifiers)} on {len(calib)} samples")
    kwargs: dict[str, Any] = {}
    if calib:
        c = cfg.calibration
        # Tokenized here (the texts already carry the chat template): llm-compressor then skips its
        # own datasets.map, whose fingerprinting pickles the whole tokenizer (~20 s on a small CPU).
        enc = tok(calib, add_special_tokens=False, truncation=True, max_length=c["max_seq_length"])
        kwargs = dict(dataset=Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}),
                      num_calibration_samples=len(calib), max_seq_length=c["max_seq_length"],
                      shuffle_calibration_samples=False)
    oneshot(model=model, recipe=modifiers, tokenizer=tok, **kwargs)
    model.save_pretrained(out, save_compressed=True)
    del model
    gc.collect()


def _no_pinned_memory() -> None:
    """llm-compressor 0.14's AWQ pins its activation cache for faster GPU copies; pinning needs an
    accelerator, so on a CPU-only torch it raises. Pinning is only a transfer optimisation: skip it."""
    from llmcompressor.pipelines.cache import IntermediatesCache
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
