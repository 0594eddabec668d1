"""QuantizeSpec validation at the door (every problem at once; nothing written)."""
from __future__ import annotations

from typing import Any

from services.common import artifacts
from services.common.errors import PreconditionError
from services.common.naming import QuantMethod, check_name, quantized_model_name
from services.common.storage import ObjectStore
from services.common.validation import Problems, in_range

# Post-training methods this quantizer runs -> the study's QuantMethod (for the name tag).
METHODS = {"bnb_int8": QuantMethod.INT8}


def resolve_quantize_spec(spec: dict[str, Any], store: ObjectStore) -> dict[str, Any]:
    p = Problems()
    source = spec.get("source_model", "")
    p.require(bool(source), "source_model: required") and p.add(check_name("source_model", source))
    method = spec.get("method", "")
    p.require(method in METHODS, f"method: unknown {method!r}; known: {', '.join(METHODS)}")
    threshold = in_range(p, spec, "llm_int8_threshold", 6.0, 0, 1e4)
    if spec.get("output_name"):
        p.add(check_name("output_name", spec["output_name"]))
    if p.invalid:
        p.raise_if_any()
    manifest = artifacts.read_manifest(store, "models", source)
    if manifest is None:
        p.not_found(f"source_model: model {source!r} not found in the models bucket")
        p.raise_if_any()
    if manifest.get("kind") == "quantized":
        raise PreconditionError(f"source_model: {source!r} is already quantized "
                                f"({manifest.get('quantization', {}).get('quant_tag')}); quantize its source instead")
    if manifest.get("kind") == "trained" and not manifest.get("merged", True):
        raise PreconditionError(f"source_model: {source!r} holds only an adapter; train it with "
                                "merge_after_train or quantize its base")
    out = spec.get("output_name") or quantized_model_name(source, METHODS[method])
    if artifacts.read_manifest(store, "models", out) is not None:
        raise PreconditionError(f"output model {out!r} already exists; choose another output_name or delete it first")
    return {"source_model": source, "method": method, "llm_int8_threshold": threshold, "output_name": out,
            "quant_method": METHODS[method].value}
