"""Quantizer benchmark: per method, the job's wall time through the real gRPC service (child
process start, imports, quantization, report, commit), the quantization step alone, size ratios,
and the report's quality numbers (mean KL, top-1 agreement, perplexity delta, weight error) on the
tiny Qwen3 with the seed ARC data.

    .venv/bin/python -m bench.bench_quantizer [--calibration 16] [--prompts 8] [--seq 128] [--json out.json]

The tiny Qwen3 is random-weight with tied 151,936 x 64 embeddings (99% of its bytes, never
quantized): the disk ratio stays near 1, the quantized-layers ratio is the compression; its
near-uniform next-token distributions make KL tiny and top-1 agreement easy. The numbers show what
each method costs and that the pipeline measures; a trained model is needed to rank their quality."""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FTLAB_SHARED_DIR", ROOT.parent / "shared"))
BASE = "Qwen3-tiny-base"
METHODS = {
    "bnb_int8 (LLM.int8, t=6)": {"method": "bnb_int8"},
    "bnb_4bit NF4 + double quant": {"method": "bnb_4bit"},
    "bnb_4bit FP4": {"method": "bnb_4bit", "bnb_4bit_quant_type": "fp4", "double_quant": False},
    "smoothquant_w8a8 GPTQ (a=0.8)": {"method": "smoothquant_w8a8"},
    "smoothquant_w8a8 RTN (a=0.8)": {"method": "smoothquant_w8a8", "algorithm": "rtn"},
    "w4a16 GPTQ g32": {"method": "w4a16", "group_size": 32},
    "w4a16 RTN g32": {"method": "w4a16", "algorithm": "rtn", "group_size": 32},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calibration", type=int, default=16, help="calibration samples")
    ap.add_argument("--prompts", type=int, default=8, help="held-out report prompts")
    ap.add_argument("--seq", type=int, default=128, help="max tokens per sample / prompt")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from services.common.torch_utils import modeling
    from services.common.rpc.clients import ServiceClient
    from services.common.data.importing import import_dataset
    from services.common.rpc.service import RunningService
    from services.common.storage.store import LocalStore
    from services.quantizer.server import SERVICE

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        store = LocalStore(Path(tmp) / "storage")
        store.ensure_buckets()
        modeling.make_tiny_qwen3(str(SHARED / "tokenizers" / "qwen3"), Path(tmp) / "tiny", seed=0)
        modeling.commit_base_model(store, BASE, Path(tmp) / "tiny", {"source": "tiny-random-qwen3", "seed": 0})
        import_dataset(store, "arc", "seed", SHARED / "datasets" / "seed")
        svc = RunningService(SERVICE, store, "127.0.0.1:0")
        client = ServiceClient("quantizer", svc.address)
        try:
            for label, spec in METHODS.items():
                full = {"source_model": BASE, "dataset": "arc", **spec,
                        "calibration": {"num_samples": args.calibration, "max_seq_length": args.seq},
                        "report": {"num_prompts": args.prompts, "max_seq_length": args.seq}}
                t0 = time.time()
                job = client.run(full, timeout_s=3600)
                m = job.metrics
                rows.append({"method": label, "output": job.outputs["model"], "job_s": round(time.time() - t0, 1),
                             "quantize_s": round(m["quantize_time_s"], 1), "size_ratio": m["size_ratio"],
                             "layers_ratio": m["quantized_layers_ratio"], "kl_mean": m["kl_mean"],
                             "top1": m["top1_agreement"], "ppl_delta": m["ppl_delta"],
                             "weight_err": m["weight_rel_error_mean"], "peak_rss_gb": m["peak_rss_gb"]})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            client.close()
            svc.stop()
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} CPUs; calibration {args.calibration} samples, "
          f"{args.prompts} held-out prompts, {args.seq} tokens max\n")
    print("| method | job wall s | quantize s | disk ratio | quantized-layers ratio | mean KL | top-1 agree | "
          "ppl delta | weight rel. error | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['job_s']} | {r['quantize_s']} | {r['size_ratio']:.4f} | {r['layers_ratio']:.4f} | "
              f"{r['kl_mean']:.2e} | {r['top1']:.4f} | {r['ppl_delta']:+.2f} | {r['weight_err']:.4f} | "
              f"{r['peak_rss_gb']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
