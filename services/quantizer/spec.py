"""QuantizeSpec validation at the door: every problem at once, defaults resolved into the config the
quantization child runs. Torch-free (runs in the server); reads manifests and config.json only."""
from __future__ import annotations

import json
from typing import Any

from services.common import artifacts
from services.common.errors import NotFoundError, PreconditionError, ValidationError
from services.common.naming import check_name, quantized_model_name, tag_quant
from services.common.storage import ObjectStore
from services.common.tasks import get_task, required_columns
from services.common.validation import Problems, in_range
from services.quantizer.methods import COMPUTE_DTYPES, METHOD_OPTIONS, METHODS, REGISTRY, MethodDef

__all__ = ["METHODS", "default_output_name", "resolve_quantize_spec", "linear_in_features"]

# Llama/Qwen-style decoder layers: module (under model.layers.N.) -> config key of its in-features.
_LAYER_INPUTS = {"self_attn.q_proj": "hidden", "self_attn.k_proj": "hidden", "self_attn.v_proj": "hidden",
                 "self_attn.o_proj": "attn", "mlp.gate_proj": "hidden", "mlp.up_proj": "hidden",
                 "mlp.down_proj": "intermediate"}


def resolve_quantize_spec(spec: dict[str, Any], store: ObjectStore) -> dict[str, Any]:
    p = Problems()
    blocked: list[str] = []  # FAILED_PRECONDITION problems (reported after the invalid ones)
    source = spec.get("source_model", "")
    p.require(bool(source), "source_model: required") and p.add(check_name("source_model", source))
    name = spec.get("method", "")
    method = REGISTRY.get(name)
    p.require(method is not None, f"method: unknown {name!r}; known: {', '.join(REGISTRY)}")
    opts = _options(p, spec, method)
    calib_in, report_in = spec.get("calibration", {}), spec.get("report", {})
    calibration = {"split": calib_in.get("split") or "train",
                   "num_samples": _sub_range(p, "calibration", calib_in, "num_samples", 128, 1, 100_000),
                   "seed": _sub_range(p, "calibration", calib_in, "seed", 0, 0, 2**31 - 1),
                   "max_seq_length": _sub_range(p, "calibration", calib_in, "max_seq_length", 512, 16, 131_072)}
    report = {"split": report_in.get("split") or "",
              "num_prompts": _sub_range(p, "report", report_in, "num_prompts", 16, 0, 10_000),
              "max_seq_length": _sub_range(p, "report", report_in, "max_seq_length", 256, 16, 131_072)}
    if spec.get("output_name"):
        p.add(check_name("output_name", spec["output_name"]))
    if spec.get("dataset"):
        p.add(check_name("dataset", spec["dataset"]))
    for sub, block in (("calibration", calib_in), ("report", report_in)):  # split names, used or not
        if block.get("split"):
            p.add(check_name(f"{sub}.split", block["split"]))
    algorithm = opts.get("bnb_4bit_quant_type") or opts.get("algorithm") or (method.algorithms[0] if method else "")
    needs_calibration = method is not None and algorithm in method.calibrated

    # --- storage: the source model (or adapter + its base), its layer widths, the dataset
    manifest = artifacts.read_manifest(store, "models", source) if _valid(source) else None
    if _valid(source) and manifest is None:
        p.not_found(f"source_model: model {source!r} not found in the models bucket")
    adapter, model_config = None, None
    if manifest is not None:
        adapter, model_config, problems = _source_layout(store, source, manifest, p)
        blocked += problems
    if method is not None and opts.get("group_size", 0) >= 1 and model_config is not None:  # 0: refused above
        p.add(_group_size_problems(opts["group_size"], model_config))

    dataset = spec.get("dataset") or (manifest or {}).get("dataset") or ""
    task = None
    if needs_calibration and not dataset:
        p.invalid.append(f"dataset: required for {name} with {algorithm} (calibration samples); "
                         f"the source model names no dataset")
    ds_manifest = artifacts.read_manifest(store, "datasets", dataset) if _valid(dataset) else None
    if dataset and ds_manifest is None:
        if spec.get("dataset") or needs_calibration:
            p.not_found(f"dataset: {dataset!r} not found in the datasets bucket")
        dataset = ""  # the source model's dataset is gone: the report skips its quality section
    if ds_manifest is not None:
        task = _dataset_problems(p, dataset, ds_manifest, calibration, report, needs_calibration, report_in)

    out = spec.get("output_name") or ""
    if method is not None and algorithm in method.quant_methods and source and not out:
        out = default_output_name({**spec, **opts})
    if _valid(out) and artifacts.read_manifest(store, "models", out) is not None:
        blocked.append(f"output model {out!r} already exists; choose another output_name or delete it first")
    if p.invalid:
        p.add(blocked)  # one answer lists every problem
    p.raise_if_any()
    if blocked:
        raise PreconditionError("; ".join(blocked))
    quant, variant = method.quant_methods[algorithm], _variant(method, opts)
    return {"source_model": source, "method": name, "output_name": out, "quant_method": quant.value,
            "quant_tag": tag_quant(quant) + (f"_{variant}" if variant else ""), "backend": method.backend,
            "algorithm": algorithm, "weights_bits": opts["weights_bits"], "activations_bits": method.activations_bits,
            "options": opts, "adapter": adapter, "dataset": dataset or None, "task": task,
            "calibration": calibration if needs_calibration else None, "report": report}


def default_output_name(spec: dict[str, Any]) -> str:
    """The model name a valid spec without ``output_name`` gets: the study's naming, with a suffix
    for options that change the weights (``Qwen3-8B-base_W4A16_GPTQ_g64``). Flows use it to know
    a step's output before submitting it."""
    method = REGISTRY[spec["method"]]
    opts = {f: spec.get(f, method.defaults[f]) for f in method.options}
    algorithm = opts.get("bnb_4bit_quant_type") or opts.get("algorithm") or method.algorithms[0]
    return quantized_model_name(spec["source_model"], method.quant_methods[algorithm], _variant(method, opts))


def _valid(name: str) -> bool:
    """A non-empty, well-formed name (safe to look up in storage)."""
    return bool(name) and not check_name("name", name)


def _options(p: Problems, spec: dict[str, Any], method: MethodDef | None) -> dict[str, Any]:
    """The method's options with defaults; set options the method does not take are errors."""
    ranges = {"llm_int8_threshold": (0.0, 1e4), "smoothing_strength": (0.0, 1.0), "group_size": (1, 65_536)}
    choices = {"bnb_4bit_quant_type": ("nf4", "fp4"), "compute_dtype": COMPUTE_DTYPES, "algorithm": ("gptq", "rtn")}
    for f, (lo, hi) in ranges.items():  # range checks whatever the method: report every problem
        if f in spec:
            in_range(p, spec, f, None, lo, hi)
    for f, known in choices.items():
        if spec.get(f) and spec[f] not in known:
            p.invalid.append(f"{f}: unknown {spec[f]!r}; known: {', '.join(known)}")
    if method is None:
        return {}
    for f in sorted(METHOD_OPTIONS - method.options - {"weights_bits"}):
        if spec.get(f) not in (None, ""):
            p.invalid.append(f"{f}: does not apply to method {method.name} "
                             f"(its options: {', '.join(sorted(method.options))})")
    opts: dict[str, Any] = {"weights_bits": spec.get("weights_bits", method.weights_bits[0])}
    p.require(opts["weights_bits"] in method.weights_bits,
              f"weights_bits: {opts['weights_bits']} is not supported by {method.name} "
              f"(supports: {', '.join(map(str, method.weights_bits))})")
    for f in sorted(method.options):
        opts[f] = spec[f] if spec.get(f) not in (None, "") else method.defaults[f]
    return opts


def _sub_range(p: Problems, message: str, spec: dict[str, Any], field: str, default, lo, hi):
    """in_range for a sub-message field, reported with its path (``calibration.num_samples``)."""
    sub = Problems()
    value = in_range(sub, spec, field, default, lo, hi)
    p.add([f"{message}.{m}" for m in sub.invalid])
    return value


def _variant(method: MethodDef, opts: dict[str, Any]) -> str:
    """Non-default options that change the weights, for the model name (defaults: the bare tag)."""
    parts = []
    if method.name == "bnb_int8" and opts["llm_int8_threshold"] != method.defaults["llm_int8_threshold"]:
        parts.append(f"t{opts['llm_int8_threshold']:g}")
    if method.name == "bnb_4bit" and not opts["double_quant"]:
        parts.append("noDQ")
    if method.name == "smoothquant_w8a8" and opts["smoothing_strength"] != method.defaults["smoothing_strength"]:
        parts.append(f"a{opts['smoothing_strength']:g}")
    if method.name == "w4a16" and opts["group_size"] != method.defaults["group_size"]:
        parts.append(f"g{opts['group_size']}")
    return "_".join(parts)


def _read_json(store: ObjectStore, model: str, path: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes("models", f"{model}/{path}"))
    except NotFoundError:
        return None


def _source_layout(store: ObjectStore, source: str, manifest: dict[str, Any], p: Problems):
    """(adapter to merge or None, the config.json giving layer widths, precondition problems)."""
    files = {f["path"] for f in manifest.get("files", [])}
    blocked = []
    if manifest.get("kind") == "quantized":
        blocked.append(f"source_model: {source!r} is already quantized "
                       f"({manifest.get('quantization', {}).get('quant_tag')}); quantize its source instead")
        return None, None, blocked
    adapter = None
    if "config.json" not in files:  # adapter only: merge it into its base first
        path = manifest.get("adapter_path") or ""
        adapter_cfg = _read_json(store, source, f"{path}/adapter_config.json".lstrip("/"))
        if adapter_cfg is None:
            blocked.append(f"source_model: {source!r} holds neither model weights (config.json) nor an adapter "
                           "(adapter_config.json)")
            return None, None, blocked
        base = manifest.get("base_model") or adapter_cfg.get("base_model_name_or_path", "")
        if not _valid(base) or artifacts.read_manifest(store, "models", base) is None:
            p.not_found(f"source_model: {source!r} is an adapter; its base model {base!r} is not in the models bucket")
            return None, None, blocked
        adapter = {"path": path, "base_model": base}
        source = base
    config = _read_json(store, source, "config.json")
    if config is not None and "quantization_config" in config:
        qc = config["quantization_config"]
        blocked.append(f"source_model: {source!r} is already quantized "
                       f"({qc.get('quant_method', 'quantization_config in config.json')}); quantize its source instead")
    return adapter, config, blocked


def linear_in_features(config: dict[str, Any]) -> dict[str, int]:
    """Decoder-layer linear module (``self_attn.q_proj``...) -> in-features, from a Llama/Qwen-style
    config.json; empty for architectures it does not know (the recipe checks the real modules)."""
    cfg = config.get("text_config", config)
    try:
        widths = {"hidden": cfg["hidden_size"], "intermediate": cfg["intermediate_size"],
                  "attn": cfg["num_attention_heads"] * cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])}
    except (KeyError, TypeError, ZeroDivisionError):
        return {}
    return {module: widths[kind] for module, kind in _LAYER_INPUTS.items()}


def _group_size_problems(group_size: int, config: dict[str, Any]) -> list[str]:
    layers = config.get("text_config", config).get("num_hidden_layers", 0)
    bad = [f"model.layers.{{0..{layers - 1}}}.{m} (in_features {n})"
           for m, n in linear_in_features(config).items() if n % group_size]
    if not bad:
        return []
    return [f"group_size: {group_size} does not divide the in-features of {len(bad)} quantized layer kind(s): "
            + ", ".join(bad)]


def _dataset_problems(p: Problems, name: str, manifest: dict[str, Any], calibration: dict[str, Any],
                      report: dict[str, Any], needs_calibration: bool, report_in: dict[str, Any]) -> str | None:
    splits = manifest.get("splits", {})
    try:
        task = get_task(manifest.get("task") or name)
    except ValidationError as exc:
        p.invalid.append(f"dataset: {exc}")
        return None
    for split in {calibration["split"] if needs_calibration else None, report["split"] or None} - {None}:
        if split not in splits:
            p.invalid.append(f"dataset: {name!r} has no split {split!r} (has: {', '.join(sorted(splits))})")
        else:
            missing = [c for c in required_columns(task) if c not in splits[split].get("columns", task.columns)]
            p.require(not missing, f"dataset: {name!r} split {split!r} lacks the {task.name} columns {missing}")
    rows = splits.get(calibration["split"], {}).get("rows", 0)
    if needs_calibration and calibration["split"] in splits and rows < calibration["num_samples"]:
        p.invalid.append(f"calibration.num_samples: {calibration['num_samples']} but dataset {name!r} split "
                         f"{calibration['split']!r} has only {rows} rows (too small for calibration)")
    if not report["split"]:  # held out: the test split, else the calibration split's other rows
        report["split"] = "test" if "test" in splits else calibration["split"]
    same = needs_calibration and report["split"] == calibration["split"]
    available = splits.get(report["split"], {}).get("rows", 0) - (calibration["num_samples"] if same else 0)
    if "num_prompts" in report_in and report["num_prompts"] > max(available, 0):
        p.invalid.append(f"report.num_prompts: {report['num_prompts']} but only {max(available, 0)} held-out rows "
                         f"in {name!r} split {report['split']!r}")
    report["num_prompts"] = max(0, min(report["num_prompts"], available))
    report["exclude_calibration"] = same
    return task.name
