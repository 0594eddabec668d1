"""The real model's speed on this machine: SmolLM2-135M-Instruct (converted from its GGUF once per
machine) — LoRA r8 training tokens/s, and greedy ARC evaluation samples/s in fp32 and in bf16
with the share of parsed answers that agree between the two (the check behind the evaluator's
bf16-on-AVX512-BF16 default, services/common/modeling.eval_dtype).

    .venv/bin/python -m bench.bench_real_model [--steps 4] [--items 32] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

SHARED = Path(os.environ.get("FTLAB_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--finetuned", action="store_true", help="also compare dtypes on the fine-tuned model")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from services.common.torch_utils import modeling
    from services.common.data import tasks
    from services.common.torch_utils.gguf_import import converted_smollm2
    from services.evaluator import generation
    from services.trainer.config import TrainConfig
    from services.trainer.loop import train
    from services.trainer.recipe import encode_example
    base = converted_smollm2()
    seed = SHARED / "datasets" / "seed"
    task = tasks.get_task("arc")
    load = os.getloadavg()[0]
    print(f"threads {torch.get_num_threads()}, load average {load:.1f}, cpu bf16: {modeling.cpu_has_bf16()}")

    tok = modeling.load_tokenizer(base)
    rows = pd.read_parquet(seed / "train-ai2_arc.parquet").head(args.steps * args.batch).to_dict("records")
    cfg = {"base_model": "SmolLM2-135M-Instruct", "dataset": "arc", "training_quant": "none", "peft_method": "lora", "gradient_checkpointing": False, "seed": 0,
           "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
           "packing": True, "max_seq_length": 512, "completion_only_loss": True, "per_device_batch_size": args.batch,
           "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0,
           "lr_scheduler": "constant_with_warmup", "max_grad_norm": 1.0, "optimizer": "adamw_torch",
           "logging_steps": 1, "save_steps": 0, "group_by_length": False, "world_size": 1,
           "output_name": "bench", "merge_after_train": True, "checkpoint_prefix": "unused"}

    class Quiet:
        def progress(self, *a, **k): ...
        def log(self, *a, **k): ...

    with tempfile.TemporaryDirectory() as tmp:
        ex = [encode_example(tok, task, r, 512) for r in rows]
        st = train(TrainConfig.from_dict(cfg), base, ex, Path(tmp) / "out", None, None, Quiet(), args.steps, torch.device("cpu"))
        print(f"| LoRA r8 train, batch {args.batch}, {args.steps} steps | {st['tokens'] / st['train_s']:.0f} tokens/s | "
              f"{st['train_s'] / args.steps:.2f} s/step | peak RSS {st['memory']['peak_rss_gb']:.2f} GB |")
        left = modeling.load_tokenizer(base, padding_side="left")
        test = pd.read_parquet(seed / "test-ai2_arc.parquet").head(args.items).to_dict("records")
        prompts = [generation.chat_prompt(left, task, r) for r in test]
        folders = {"base": base} | ({"LoRA fine-tune": Path(tmp) / "out"} if args.finetuned else {})
        for label, folder in folders.items():
            parsed = {}
            for dtype in (torch.float32, torch.bfloat16):
                model = modeling.load_causal_lm(folder, torch.device("cpu"), dtype=dtype)
                t = time.perf_counter()
                gens = generation.generate(model, left, prompts, max_new_tokens=16, batch_size=8)
                dt = time.perf_counter() - t
                parsed[dtype] = [tasks.parse_answer(task, g.text) for g in gens]
                texts = [g.text for g in gens]
                fmt = sum(p is not None for p in parsed[dtype]) / len(test)
                print(f"| eval {label} {str(dtype)[6:]}, {len(test)} ARC items, batch 8, 16 new tokens | "
                      f"{len(test) / dt:.2f} samples/s | format success {fmt:.0%} |")
                parsed[str(dtype)] = texts
            same = sum(a == b for a, b in zip(parsed[torch.float32], parsed[torch.bfloat16]))
            text_same = sum(a == b for a, b in zip(parsed["torch.float32"], parsed["torch.bfloat16"]))
            print(f"| {label}: fp32 vs bf16 | parsed answers equal {same}/{len(test)} | "
                  f"generated text equal {text_same}/{len(test)} |")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
