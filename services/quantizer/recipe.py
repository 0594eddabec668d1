"""The post-training quantization recipe, read top to bottom. Runs in the job's child process.

1. fetch the source (an adapter is merged into its base first)   4. reload both the way users do
2. draw calibration samples and held-out report prompts          5. report: size, weights, outliers, quality
3. quantize: the method's plugin (services/quantizer/ptq/)        6. commit: metadata, report, manifest last
"""
from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any


from services.common.storage import artifacts
from services.common.contract.identity import config_digest, digest_of
from services.common.torch_utils import modeling
from services.common.jobs.child import JobContext
from services.quantizer import calibration, report
from services.quantizer.config import QuantizeConfig

STEPS = 6


def run(ctx: JobContext, config: dict[str, Any]) -> dict[str, Any]:
    """Quantize ``config`` (the door's :func:`~services.quantizer.config.resolve_quantize_spec`
    output as the job record stores it: :meth:`QuantizeConfig.to_dict`) and commit
    ``models/<output_name>/``: the quantized weights, ``quantization_metadata.json`` and
    ``quantization_report.json`` (size in bytes, per-layer weight error, KL, top-1 agreement and
    perplexity delta on held-out prompts, activation outliers). Returns ``{"outputs": {"model":
    uri}, "metrics": {...}}`` (seconds, bytes, ratios). Library errors (a kernel missing on this
    device, out of memory) propagate and fail the job."""
    cfg = QuantizeConfig.from_dict(config)
    t0 = time.time()
    modeling.cap_cpu_threads()
    dev = modeling.device()
    dtype = modeling.compute_dtype(dev)
    modeling.reset_peak_memory()
    work = Path(ctx.workdir)

    # 1. Source model: a full model folder, or an adapter merged into its base here.
    ctx.log(f"fetching {cfg.source_model}")
    src_dir, src_manifest = modeling.fetch_model(ctx.store, cfg.source_model, work)
    merged_from = None
    if cfg.adapter:
        src_dir, merged_from = _merge_adapter(ctx, cfg.source_model, cfg.adapter, src_dir, work, src_manifest)
    tok = modeling.load_tokenizer(src_dir)
    ctx.progress(1, STEPS, message="source ready" + (" (adapter merged into its base)" if merged_from else ""))

    # 2. Calibration samples and held-out prompts, in the task's chat format.
    calib, held_out, drawn = calibration.draw(ctx.store, cfg, tok)
    calib_hash = drawn.get("calibration", {}).get("hash")
    ctx.log(f"calibration: {len(calib)} samples" + (f" (sha256 {calib_hash[:12]})" if calib else "")
            + f"; report: {len(held_out)} held-out prompts from {cfg.dataset or 'no dataset'}")
    ctx.progress(2, STEPS, message="calibration drawn")

    # 3. Quantize and save a folder plain from_pretrained loads.
    out = work / "out"
    t_quant = time.time()
    cfg.method_def.quantize(ctx, cfg, src_dir, out, tok, calib, dev, dtype)
    tok.save_pretrained(out)
    quant_s = time.time() - t_quant
    ctx.progress(3, STEPS, {"quantize_time_s": quant_s}, message=f"quantized with {cfg.method} ({cfg.quant_tag})")

    # 4. Both models as users load them (the quantized one from the saved folder).
    src_model = modeling.load_causal_lm(src_dir, dev)
    q_model = modeling.load_causal_lm(out, dev)
    ctx.progress(4, STEPS, message="reloaded source and quantized models")

    # 5. Report: size, per-layer weight error, source activation outliers, output quality.
    # Size first: compressed-tensors layers decompress on the first forward on CPU.
    size = report.size_report(src_dir, out, list(report.quantizable_linears(q_model)), src_model, q_model)
    # Rotations (QuaRot) change every weight's basis: a per-layer weight comparison would measure the
    # rotation, not the quantization; the output-level quality section is the comparison then.
    errors = report.weight_errors(src_model, q_model, dtype, dev) if cfg.method_def.compares_weights else []
    ctx.metrics({"size_ratio": size["size_ratio"], "quantized_layers_ratio": size["quantized_layers_bytes"]["ratio"],
                 "weight_memory_ratio": size["weight_memory_bytes"]["ratio"]}, message="size")
    err_summary = report.summarize_errors(errors)
    ctx.metrics({"weight_rel_error_mean": err_summary.get("rel_error_mean", 0.0),
                 "weight_rel_error_max": err_summary.get("rel_error_max", 0.0)},
                message=f"weight reconstruction error; worst layer {err_summary.get('worst_layer')}")
    max_len = cfg.report["max_seq_length"]
    outliers = report.activation_outliers(src_model, tok, calib or held_out, max_len, dev)
    out_summary = report.summarize_outliers(outliers)
    if out_summary:
        ctx.metrics({"activation_max_over_median": out_summary["max_over_median_max"]},
                    message=f"activation outliers; worst layer {out_summary['worst_layer']}")
    qual = (report.quality(src_model, q_model, tok, held_out, max_len, dev) if held_out else
            {"skipped": "no held-out prompts: give a dataset (or report.num_prompts > 0) for the quality section"})
    if "kl_mean" in qual:
        ctx.metrics({k: qual[k] for k in ("kl_mean", "top1_agreement", "ppl_source", "ppl_quantized", "ppl_delta")},
                    message=f"quality on {qual['prompts']} held-out prompts")
    else:
        ctx.log(f"quality: skipped ({qual['skipped']})")
    degradation = report.degradation_row(cfg, size, qual)
    ctx.progress(5, STEPS, message="report measured")
    del src_model, q_model
    gc.collect()

    # 6. Metadata (the study's QuantizationSpec fields), report, manifest last with lineage.
    spec = {"method": cfg.quant_method, "weights_bits": cfg.weights_bits,
            "activations_bits": cfg.activations_bits, "group_size": cfg.options.get("group_size"),
            "lm_head_dtype": cfg.lm_head_dtype or str(dtype).removeprefix("torch."), "backend": cfg.backend,
            "kv_cache_dtype": None,
            "calibration_size": len(calib) if calib else None, "calibration_hash": calib_hash,
            "quant_tag": cfg.quant_tag, "service_method": cfg.method, "algorithm": cfg.algorithm,
            "options": cfg.options,
            # what loads it, for the evaluator (which may not import the quantizer's plugins)
            "format": cfg.method_def.output_format, "vllm_loads": cfg.method_def.vllm_loads}
    memory = modeling.peak_memory()
    wall = time.time() - t0
    metadata = {"model_name": cfg.output_name, "source_model": cfg.source_model, "merged_adapter": merged_from,
                "quantization": spec, "calibration": drawn, "size": size, "memory": memory,
                "wall_time_s": round(wall, 3), "quantize_time_s": round(quant_s, 3), "hardware": modeling.hardware(),
                "versions": _versions()}
    full_report = {"model_name": cfg.output_name, "source_model": cfg.source_model, "quant_tag": cfg.quant_tag,
                   "source_kind": src_manifest.get("kind"), "degradation": degradation, "size": size, "quality": qual,
                   "weights": {"summary": err_summary, "layers": errors,
                               **({} if cfg.method_def.compares_weights else
                                  {"skipped": "rotated weights: compare outputs (quality)"})},
                   "activation_outliers": {"of": "source model, linear-layer inputs", "summary": out_summary,
                                           "texts": "calibration" if calib else "held-out", "layers": outliers},
                   "note": _note(src_manifest)}
    (out / "quantization_metadata.json").write_text(json.dumps(metadata, indent=2))
    (out / "quantization_report.json").write_text(json.dumps(full_report, indent=2))
    artifacts.commit_dir(ctx.store, "models", cfg.output_name, out, {
        "kind": "quantized", "name": cfg.output_name, "parents": [cfg.source_model],
        "source_model": cfg.source_model, "source_manifest_sha": artifacts.manifest_digest(src_manifest),
        "merged_adapter": merged_from, "task": src_manifest.get("task") or cfg.task,
        "dataset": src_manifest.get("dataset"), "calibration_dataset": cfg.dataset if calib else None,
        "spec": cfg.to_dict(), "quantization": spec, "versions": _versions(), "git_commit": modeling.git_commit(),
        "config_digest": config_digest("quantize", cfg.to_dict(), [digest_of(src_manifest, cfg.source_model)]),
        "parent_digests": [digest_of(src_manifest, cfg.source_model)]})
    ctx.progress(6, STEPS, message="committed")
    metrics = {"size_ratio": size["size_ratio"], "quantized_layers_ratio": size["quantized_layers_bytes"]["ratio"],
               "weight_memory_ratio": size["weight_memory_bytes"]["ratio"],
               "quantized_bytes": size["disk_bytes"]["quantized"], "quantize_time_s": quant_s, "wall_time_s": wall,
               "weight_rel_error_mean": err_summary.get("rel_error_mean", 0.0),
               "peak_rss_gb": memory["peak_rss_gb"], "peak_vram_reserved_gb": memory["peak_vram_reserved_gb"],
               "calibration_size": len(calib)}
    metrics.update({k: qual[k] for k in ("kl_mean", "top1_agreement", "ppl_delta") if k in qual})
    return {"outputs": {"model": f"s3://models/{cfg.output_name}/"}, "metrics": metrics}


# ----------------------------------------------------------------------------- steps


def _merge_adapter(ctx: JobContext, source_model: str, adapter: dict[str, str], adapter_root: Path, work: Path,
                   manifest: dict[str, Any] | None = None):
    """Merge an adapter into its (fetched) base — onto the dequantized quantized base when the
    manifest says it was trained on one (modeling.merge_adapter, shared with the trainer); the
    quantizer then treats the merge as its source. ``adapter``: {path (in the source folder),
    base_model} as the door found them."""
    base = adapter["base_model"]
    trained_on = ((manifest or {}).get("quantization") or {}).get("method")
    ctx.log(f"{source_model} is an adapter: merging it into {base} first"
            + (f" (dequantized {trained_on} base, as trained)" if trained_on in modeling.TRAINING_QUANT_METHODS else ""))
    base_dir, base_manifest = modeling.fetch_model(ctx.store, base, work)
    adapter_dir = adapter_root / adapter["path"] if adapter["path"] else adapter_root
    merged = modeling.merge_adapter(base_dir, adapter_dir, trained_on)
    merged_dir = work / "merged"
    merged.save_pretrained(merged_dir)
    tok_src = adapter_root if (adapter_root / "tokenizer_config.json").exists() else base_dir
    modeling.load_tokenizer(tok_src).save_pretrained(merged_dir)
    return merged_dir, {"base_model": base, "base_manifest_sha": artifacts.manifest_digest(base_manifest),
                        "adapter_path": adapter["path"] or "."}


def _versions() -> dict[str, str]:
    import importlib.metadata as md
    versions = modeling.library_versions()
    for pkg in ("llmcompressor", "compressed-tensors", "hqq"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return versions


def _note(src_manifest: dict[str, Any]) -> str:
    origin = src_manifest.get("origin", {})
    if origin.get("source") == "tiny-random-qwen3":
        return ("the source is a random-weight test model: its next-token distributions are close to uniform "
                "and its activations have no real outlier channels, so KL, agreement and perplexity here "
                "prove the pipeline, not the method's quality on a trained model")
    return ""
