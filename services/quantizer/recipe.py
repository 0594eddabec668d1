"""The post-training quantization recipe, read top to bottom. Runs in the job's child process."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from services.common import artifacts, modeling
from services.common.naming import QuantMethod, tag_quant
from services.common.runtime import JobContext


def run(ctx: JobContext, cfg: dict[str, Any]) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    t0 = time.time()
    dev = modeling.device()
    modeling.reset_peak_memory()
    ctx.log(f"fetching {cfg['source_model']}")
    src_dir, src_manifest = modeling.fetch_model(ctx.store, cfg["source_model"], ctx.workdir)
    ctx.progress(1, 3, message="fetched source")

    # bitsandbytes LLM.int8: weights quantized while loading; lm_head stays in full precision.
    bnb = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=cfg["llm_int8_threshold"])
    model = AutoModelForCausalLM.from_pretrained(
        src_dir, quantization_config=bnb, dtype=modeling.compute_dtype(dev),
        device_map={"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"})
    ctx.progress(2, 3, message="quantized")

    out = Path(ctx.workdir) / "out"
    model.save_pretrained(out)
    modeling.load_tokenizer(src_dir).save_pretrained(out)
    quant = QuantMethod(cfg["quant_method"])
    spec = {"method": quant.value, "weights_bits": 8, "activations_bits": 16, "group_size": None,
            "lm_head_dtype": str(modeling.compute_dtype(dev)).removeprefix("torch."), "backend": "bitsandbytes",
            "kv_cache_dtype": None, "calibration_size": None, "calibration_hash": None,
            "quant_tag": tag_quant(quant), "llm_int8_threshold": cfg["llm_int8_threshold"]}
    size = {"source_bytes": _weights_bytes(src_dir), "quantized_bytes": _weights_bytes(out)}
    size["size_ratio"] = round(size["quantized_bytes"] / max(size["source_bytes"], 1), 4)
    memory = modeling.peak_memory()
    metadata = {"model_name": cfg["output_name"], "source_model": cfg["source_model"], "quantization": spec,
                "size": size, "memory": memory, "wall_time_s": round(time.time() - t0, 3),
                "hardware": modeling.hardware()}
    (out / "quantization_metadata.json").write_text(json.dumps(metadata, indent=2))
    artifacts.commit_dir(ctx.store, "models", cfg["output_name"], out, {
        "kind": "quantized", "name": cfg["output_name"], "parents": [cfg["source_model"]],
        "source_model": cfg["source_model"], "source_manifest_sha": artifacts.manifest_digest(src_manifest),
        "task": src_manifest.get("task"), "spec": cfg, "quantization": spec,
        "versions": modeling.library_versions(), "git_commit": modeling.git_commit()})
    ctx.progress(3, 3, message="committed")
    return {"outputs": {"model": f"s3://models/{cfg['output_name']}/"},
            "metrics": {"size_ratio": size["size_ratio"], "quantized_bytes": size["quantized_bytes"],
                        "peak_rss_gb": memory["peak_rss_gb"]}}


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))
