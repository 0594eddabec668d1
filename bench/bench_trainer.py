"""Trainer benchmark: tokens/s, peak memory, final loss and memory-estimate error for LoRA, DoRA,
VeRA, full fine-tuning and QLoRA on the tiny Qwen3 and identical ARC rows, each in the study's
setup (batch 1 x gradient accumulation 8, no packing, loss over full-sequence logits) and in
ours (batch 4 x 2, packing, logits at the answer tokens only). Same 8 rows per optimizer step,
same order, same seed, dropout 0: the final losses must agree.

    .venv/bin/python -m bench.bench_trainer [--steps 6] [--rows 48] [--json out.json]
        [--model tiny|smollm2] [--method NAME] [--setup study|ours]

Each configuration runs the real recipe (services.trainer.recipe.run) in a fresh process, so
the peak RSS is its own."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FTLAB_SHARED_DIR", ROOT.parent / "shared"))
BASE = "Qwen3-tiny-base"
STUDY = {"per_device_batch_size": 1, "gradient_accumulation_steps": 8, "packing": False}
OURS = {"per_device_batch_size": 4, "gradient_accumulation_steps": 2, "packing": True}
METHODS = {
    "LoRA r8 (q,k,v,o)": {"peft_method": "lora", "lora": {"r": 8, "dropout": 0.0}},
    "DoRA r8 (q,k,v,o)": {"peft_method": "dora", "lora": {"r": 8, "dropout": 0.0}},
    "VeRA r64 (q,k,v,o)": {"peft_method": "vera", "lora": {"r": 64, "dropout": 0.0}},
    "Full FT": {"peft_method": "none"},
    "QLoRA r8 (NF4, bf16)": {"peft_method": "lora", "lora": {"r": 8, "dropout": 0.0}, "training_quant": "qlora"},
}


class _Events:
    def put(self, msg):
        pass


def run_one(store_root: str, spec: dict, study: bool) -> dict:
    """One configuration in this process: resolve the spec as the service does, run the recipe.
    Also the peak RSS before the model is saved (and merged): training's own peak."""
    import resource

    from services.common.jobs.child import JobContext
    from services.common.storage.store import LocalStore
    from services.trainer import loop, recipe
    from services.trainer.config import resolve_train_spec
    before_save = {}
    save_model = loop.save_model

    def measured_save(*a, **k):
        before_save["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
        return save_model(*a, **k)
    loop.save_model = measured_save
    store = LocalStore(store_root)
    cfg = resolve_train_spec(spec, store)
    cfg["answer_logits_only"] = not study  # the study's SFT computed logits over the whole sequence
    with tempfile.TemporaryDirectory() as wd:
        recipe.run(JobContext("bench", store, _Events(), wd), cfg)
    meta = json.loads(store.get_bytes("models", f"{cfg['output_name']}/training_metadata.json"))
    store.delete_prefix("models", f"{cfg['output_name']}/")
    est = meta["memory_estimate"]
    return {"tokens_per_s": meta["tokens_per_s"], "train_s": meta["train_time_s"],
            "peak_rss_gb": meta["memory"]["peak_rss_gb"], "train_peak_rss_gb": round(before_save["rss"], 3),
            "final_loss": meta["final_loss"],
            "trainable_params": meta["model_info"]["trainable_params"],
            "estimate_submit_gb": est["at_submit"]["total_gb"], "estimate_actual_gb": est["with_actual_lengths"]["total_gb"],
            "estimate_error_pct": est["error_pct_actual_lengths"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--max-seq-length", type=int, default=512)
    ap.add_argument("--model", choices=("tiny", "smollm2"), default="tiny",
                    help="smollm2: the real SmolLM2-135M-Instruct (ftlab model import --gguf smollm2's conversion)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--method", choices=list(METHODS), action="append", help="only these methods (repeatable)")
    ap.add_argument("--setup", choices=("study", "ours"), action="append", help="only these setups (repeatable)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: "<store>|<spec json>|<study 0/1>"
    args = ap.parse_args()
    if args.one:
        root, spec, study = args.one.split("|")
        print("RESULT " + json.dumps(run_one(root, json.loads(spec), study == "1")), flush=True)
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["FTLAB_DEVICE"] = os.environ.get("FTLAB_DEVICE", "cpu")
    from services.common.torch_utils import modeling
    from services.common.data.importing import import_dataset
    from services.common.storage.store import LocalStore
    tmp = tempfile.mkdtemp(prefix="bench-trainer-")
    store = LocalStore(Path(tmp) / "store")
    store.ensure_buckets()
    base_model = BASE
    if args.model == "smollm2":
        from services.common.torch_utils.gguf_import import converted_smollm2
        base_model = "SmolLM2-135M-Instruct"
        modeling.commit_base_model(store, base_model, str(converted_smollm2()), {"source": "gguf smollm2"})
    else:
        with tempfile.TemporaryDirectory() as d:
            modeling.make_tiny_qwen3(str(SHARED / "tokenizers" / "qwen3"), d, seed=0)
            modeling.commit_base_model(store, BASE, d, {"source": "tiny-random-qwen3", "seed": 0})
    import_dataset(store, "arc", "seed", SHARED / "datasets" / "seed")
    common = {"base_model": base_model, "dataset": "arc", "max_steps": args.steps, "train_limit": args.rows,
              "max_seq_length": args.max_seq_length, "learning_rate": 2e-4, "warmup_ratio": 0.0, "seed": 0,
              "save_steps": 0}
    results = []
    for name, method in METHODS.items():
        for setup, extra in (("study", STUDY), ("ours", OURS)):
            if (args.method and name not in args.method) or (args.setup and setup not in args.setup):
                continue
            spec = {**common, **method, **extra, "output_name": f"bench-{len(results)}"}
            t0 = time.time()
            out = subprocess.run([sys.executable, "-m", "bench.bench_trainer", "--one",
                                  f"{store.root}|{json.dumps(spec)}|{int(setup == 'study')}"],
                                 cwd=ROOT, capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{name} / {setup} failed:\n{out.stderr[-3000:]}")
            r = {"method": name, "setup": setup, **json.loads(line[7:]), "process_s": round(time.time() - t0, 1)}
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)

    print(f"\nsteps {args.steps} x 8 rows, max_seq_length {args.max_seq_length}, {base_model} on "
          f"{modeling.hardware()['device']} ({os.cpu_count()} cores)\n")
    print("| method | setup | tokens/s | x study | peak RSS GiB (training / job) | final loss | "
          "estimate GiB (submit / actual) | estimate error |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        base = next((b for b in results if b["method"] == r["method"] and b["setup"] == "study"), None)
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else "-"
        print(f"| {r['method']} | {r['setup']} | {r['tokens_per_s']:.0f} | {ratio} | "
              f"{r['train_peak_rss_gb']:.2f} / {r['peak_rss_gb']:.2f} | {r['final_loss']:.4f} | {r['estimate_submit_gb']:.2f} / "
              f"{r['estimate_actual_gb']:.2f} | {r['estimate_error_pct']:+.1f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
