"""Load any model the other services produce, from its folder in the `models` bucket:

- full weights (base, merged fine-tune), fp or bitsandbytes INT8/4-bit or llm-compressor
  compressed-tensors: ``modeling.load_causal_lm`` (the ``quantization_config`` in config.json is
  honoured by transformers);
- adapter-only fine-tunes (manifest ``merged: false``): the base named in the manifest, loaded the
  way it was trained (NF4 for QLoRA, int8 for INT8 training, else full precision), plus the PEFT
  adapter from ``adapter_path``.

The quantization spec comes from the model's manifest (else its quantization/training metadata)
and is echoed in the results.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from services.common.storage import artifacts
from services.common.torch_utils import modeling
from services.common.contract.errors import NotFoundError
from services.common.storage.store import ObjectStore

NO_QUANT = {"method": "NoQuant", "quant_tag": "NoQuant"}


def is_adapter_only(manifest: dict[str, Any]) -> bool:
    return manifest.get("merged") is False and bool(manifest.get("adapter_path"))


def base_of(manifest: dict[str, Any]) -> str | None:
    return manifest.get("base_model") or next(iter(manifest.get("parents") or []), None)


def quantization_spec(model_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Manifest first; else the metadata file the quantizer or trainer wrote; else NoQuant."""
    if manifest.get("quantization"):
        return {**manifest["quantization"], "source": "model_manifest"}
    for name, source in (("quantization_metadata.json", "quantization_metadata"),
                         ("training_metadata.json", "training_metadata")):
        path = model_dir / name
        if path.exists():
            q = json.loads(path.read_text()).get("quantization")
            if q:
                return {**q, "source": source}
    return {**NO_QUANT, "source": "default"}


def _load_base_as_trained(base_dir: Path, quant: dict[str, Any], dev: torch.device, dtype=None):
    """The base the adapter was trained on: the adapter's deltas were fitted to that exact function
    (a quantized one is built by the trainer's own ``modeling.load_quantized_base``)."""
    method = quant.get("method")
    if method not in modeling.TRAINING_QUANT_METHODS:
        return modeling.load_causal_lm(base_dir, dev, dtype=dtype)
    return modeling.load_quantized_base(base_dir, method, dev).eval()


def load_for_eval(store: ObjectStore, name: str, workdir: str, dev: torch.device, dtype=None):
    """(model, tokenizer with left padding, manifest, info) for the model named ``name``;
    ``dtype`` for unquantized weights (default: the compute dtype)."""
    model_dir, manifest = modeling.fetch_model(store, name, workdir)
    quant = quantization_spec(model_dir, manifest)
    info: dict[str, Any] = {"name": name, "kind": manifest.get("kind"), "quantization": quant,
                            "manifest_sha": artifacts.manifest_digest(manifest)}
    if is_adapter_only(manifest):
        from peft import PeftModel
        base = base_of(manifest)
        if base is None or artifacts.read_manifest(store, modeling.MODELS, base) is None:
            raise NotFoundError(f"model {name!r} is an adapter whose base {base!r} is not in the models bucket")
        base_dir, _ = modeling.fetch_model(store, base, workdir)
        model = PeftModel.from_pretrained(_load_base_as_trained(base_dir, quant, dev, dtype),
                                          model_dir / manifest["adapter_path"]).eval()
        tok_dir = model_dir if (model_dir / "tokenizer_config.json").exists() else base_dir
        info |= {"loaded_as": "base+adapter", "base_model": base, "adapter_path": manifest["adapter_path"]}
    else:
        model = modeling.load_causal_lm(model_dir, dev, dtype=dtype)
        tok_dir = model_dir
        qcfg = getattr(model.config, "quantization_config", None)
        info["loaded_as"] = "full"
        if qcfg is not None:
            qd = qcfg if isinstance(qcfg, dict) else qcfg.to_dict()
            info["quantization_config"] = {"quant_method": str(qd.get("quant_method")), "format": qd.get("format")}
    info["dtype"] = str(model.dtype).removeprefix("torch.")
    tok = modeling.load_tokenizer(tok_dir, padding_side="left")  # left padding for batched generation
    return model, tok, manifest, info
