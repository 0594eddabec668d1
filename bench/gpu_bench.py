"""GPU bench for one large GPU with no network (run it through ``bench/gpu_bench.sh``): the
study's Phase-3 training configurations on the Qwen3-8B and Qwen3-4B architectures with random
weights (bench/gpu_configs/*.json, the public config.json files; speed and memory do not depend on
the weights), built and trained through our recipe's own model construction
(``services.trainer.loop.build_model``, ``collate`` with logits at the answer tokens only) —
then the peak memory next to the study's table and our memory estimator, tokens/s and MFU, and
greedy-generation items/s on the 8B.

    bench/gpu_bench.sh                 # on the GPU host, ≤ 10 minutes on one H200
    bench/gpu_bench.sh --dry-run       # anywhere: tiny shapes on CPU (what the test suite runs)

Each case: micro-batch ``--batch`` × ``--seq`` tokens (phase3.yaml: batch 4, up to 1024 tokens;
default 512), the last ``--answer`` tokens labelled (completion-only loss), AdamW, ``--steps``
timed optimizer steps after one warm-up step. Memory is torch's peak allocated / reserved in GiB
(on CPU: the process's peak RSS). The study's numbers are its reported GB for the same model,
method and rank (seed/PROJECT_STRUCTURE.md's table).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bench" / "gpu_configs"
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=2048, max_window_layers=2)
LORA256 = {"r": 256, "alpha": 512, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
# name -> (config file, our recipe's cfg, the study's figure: (kind, GB))
CASES = {
    "Qwen3-8B LoRA r256": ("qwen3-8b.json", {"peft_method": "lora", "lora": LORA256, "training_quant": "none",
                                             "gradient_checkpointing": False, "learning_rate": 2e-4},
                           ("allocated", 20.17)),
    "Qwen3-8B QLoRA r256": ("qwen3-8b.json", {"peft_method": "lora", "lora": LORA256, "training_quant": "qlora",
                                              "gradient_checkpointing": True, "learning_rate": 2e-4},
                            ("allocated", 7.61)),
    "Qwen3-4B full FT": ("qwen3-4b.json", {"peft_method": "none", "training_quant": "none",
                                           "gradient_checkpointing": True, "learning_rate": 1e-5},
                         ("reserved", 33.1)),
}


def model_config(name: str, dry_run: bool) -> dict:
    cfg = json.loads((CONFIGS / name).read_text())
    return {**cfg, **TINY} if dry_run else cfg


def build_random(config: dict, out: Path, dev) -> None:
    """A random-weight model of this architecture saved as safetensors (built on ``dev``)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    conf = Qwen3Config(**{k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")})
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(conf, dtype=dtype)
    model.save_pretrained(out)
    del model
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def batch(args, vocab: int, gen):
    import torch

    from services.trainer.loop import collate
    examples = []
    for _ in range(args.batch):
        ids = torch.randint(10, vocab, (args.seq,), generator=gen).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (args.seq - args.answer) + ids[-args.answer:]})
    return collate(examples, 0, packing=None, max_len=args.seq, answer_logits_only=True)


def peak(dev) -> dict:
    import torch

    from services.common.torch_utils import modeling
    if dev.type == "cuda":
        return {"allocated_gb": torch.cuda.max_memory_allocated(dev) / 2**30,
                "reserved_gb": torch.cuda.max_memory_reserved(dev) / 2**30}
    rss = modeling.peak_memory()["peak_rss_gb"]
    return {"allocated_gb": rss, "reserved_gb": rss}


def train_case(name: str, args, dev, work: Path) -> dict:
    import torch

    from services.common.torch_utils import mfu
    from services.common.torch_utils import modeling
    from services.trainer.memory import estimate_training_memory
    from services.trainer.config import TrainConfig
    from services.trainer.loop import build_model
    file, cfg, (kind, study_gb) = CASES[name]
    config = model_config(file, args.dry_run)
    base = work / file.removesuffix(".json")
    if not base.exists():
        build_random(config, base, dev)
    cfg = TrainConfig.from_dict({"base_model": file.removesuffix(".json"), "dataset": "random", **cfg, "seed": 0,
                                 "per_device_batch_size": args.batch, "max_seq_length": args.seq,
                                 "device_type": dev.type, "optimizer": "adamw_torch"})
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    modeling.reset_peak_memory()
    model = build_model(cfg, base, dev)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate)
    gen = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    tokens, losses, t0 = 0, [], None
    for step in range(args.steps + 1):
        if step == 1:  # step 0 is the warm-up (kernels, allocator)
            sync()
            t0 = time.perf_counter()
        b = {k: v.to(dev) if hasattr(v, "to") else v for k, v in batch(args, config["vocab_size"], gen).items()}
        with amp:
            loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())
        if step:
            tokens += b["input_ids"].numel()
    sync()
    seconds = time.perf_counter() - t0
    mem = peak(dev)
    logit_rows = args.batch * args.answer
    est = estimate_training_memory(config, cfg, args.batch * args.seq, logit_rows)
    flops = mfu.training_flops(config, tokens, logit_rows * args.steps, args.seq,
                               full=cfg.method.full, trainable_params=sum(p.numel() for p in params))
    dtype = "bfloat16" if dev.type == "cuda" else "float32"
    m = mfu.mfu(flops, seconds, dtype, "cuda" if dev.type == "cuda" else "cpu")
    measured = mem[f"{kind}_gb"]
    del model, opt, params
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {"case": name, "tokens_per_s": tokens / seconds, "steps": args.steps, **mem,
            "study_gb": study_gb, "study_kind": kind, "estimate_gb": est["total_gb"],
            "estimate_error_pct": 100.0 * (est["total_gb"] - measured) / max(measured, 1e-9),
            "vs_study_pct": 100.0 * (measured - study_gb) / study_gb, "mfu": m["mfu"], "peak_gflops": m["peak_gflops"],
            "final_loss": losses[-1]}


def eval_case(args, dev, work: Path) -> dict:
    """Greedy generation items/s on the 8B (HF generate, batch ``--eval-batch``, fixed lengths)."""
    import torch

    from services.common.torch_utils import mfu
    from services.common.torch_utils import modeling
    config = model_config("qwen3-8b.json", args.dry_run)
    base = work / "qwen3-8b"
    if not base.exists():
        build_random(config, base, dev)
    model = modeling.load_causal_lm(base, dev)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, config["vocab_size"], (args.eval_batch, args.prompt), generator=gen).to(dev)
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
              pad_token_id=0, attention_mask=torch.ones_like(ids))
    model.generate(ids[:, :8], **{**kw, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    model.generate(ids, **kw)
    sync()
    seconds = time.perf_counter() - t0
    n_gen = args.eval_batch * args.new_tokens
    flops = mfu.generation_flops(config, args.eval_batch * args.prompt, n_gen, args.prompt + args.new_tokens / 2)
    m = mfu.mfu(flops, seconds, "bfloat16" if dev.type == "cuda" else "float32", "cuda" if dev.type == "cuda" else "cpu")
    del model
    gc.collect()
    return {"case": "Qwen3-8B generation (HF generate)", "items_per_s": args.eval_batch / seconds,
            "tokens_per_s": n_gen / seconds, "batch": args.eval_batch, "prompt": args.prompt,
            "new_tokens": args.new_tokens, "mfu": m["mfu"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (no GPU needed)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--answer", type=int, default=64)
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    p.add_argument("--workdir", help="where the random models are written (default: a temporary folder)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.dry_run:
        args.steps, args.batch, args.seq, args.answer = min(args.steps, 2), 2, 64, 8
        args.eval_batch, args.prompt, args.new_tokens = 2, 16, 4
        os.environ["FTLAB_DEVICE"] = "cpu"
    import torch
    dev = torch.device("cpu") if args.dry_run else torch.device("cuda")
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --dry-run for the CPU check", file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ftlab-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (dry run, tiny shapes)",
               "torch": torch.__version__, "train": [], "eval": None}
    try:
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = [c for c in cases if c not in CASES]
        if unknown:
            p.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
        ordered = sorted(cases, key=lambda c: CASES[c][0])  # 4B first, then the 8B (kept for the eval)
        for i, name in enumerate(ordered):
            t0 = time.time()
            r = train_case(name, args, dev, work)
            results["train"].append(r)
            print(f"{name}: {json.dumps(r)} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
            file = CASES[name][0]
            if file != "qwen3-8b.json" and all(CASES[c][0] != file for c in ordered[i + 1:]):
                shutil.rmtree(work / file.removesuffix(".json"), ignore_errors=True)  # disk: one model at a time
        results["eval"] = eval_case(args, dev, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ndevice: {results['device']}, torch {results['torch']}; batch {args.batch} x {args.seq} tokens, "
          f"{args.steps} timed steps\n")
    print("| case | peak allocated GiB | peak reserved GiB | study GB | vs study | our estimate GiB | estimate error | tokens/s | MFU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["train"]:
        print(f"| {r['case']} | {r['allocated_gb']:.2f} | {r['reserved_gb']:.2f} | {r['study_gb']} ({r['study_kind']}) | "
              f"{r['vs_study_pct']:+.0f}% | {r['estimate_gb']:.2f} | {r['estimate_error_pct']:+.0f}% | "
              f"{r['tokens_per_s']:.0f} | {100 * r['mfu']:.1f}% |")
    e = results["eval"]
    print(f"\n{e['case']}: {e['items_per_s']:.2f} items/s, {e['tokens_per_s']:.0f} generated tokens/s "
          f"(batch {e['batch']}, prompt {e['prompt']}, {e['new_tokens']} new tokens), MFU {100 * e['mfu']:.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
