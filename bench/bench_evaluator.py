r"""Evaluator speed: our batched generation with early stop vs the study's way (one prompt at a time,
``max_new_tokens=1000``, stop only at EOS), same tiny Qwen3, same items, same greedy decoding.

Two models:
- ``random``: the tiny random Qwen3. It never writes ``\boxed{}`` and rarely EOS, so both ways run
  to the token limit: this isolates what batching alone buys.
- ``boxed``: the same model briefly fine-tuned (in-process, seconds) to answer
  ``\boxed{<gold>}<|im_end|>``: it stops at EOS right after the box, so only batching can help;
- ``rambling``: fine-tuned on ``\boxed{<gold>}`` without EOS: it writes the box and rambles on to
  the limit, as the study's models often did (its example file has 1000-token answers); here early
  stopping is what counts.

Reports samples/s of each way, the ratio, mean generated tokens, and whether the parsed answers
agree item by item. Run: ``.venv/bin/python -m bench.bench_evaluator [--items 200 --baseline-items 20]``
(the baseline on the random model costs ~max_new_tokens forward passes per item, so it runs on a
prefix of the items; samples/s is a rate, and agreement is checked on that prefix).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from services.common.torch_utils import modeling
from services.common.data import tasks
from services.evaluator import generation

SHARED = Path(os.environ.get("FTLAB_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
SEED = SHARED / "datasets" / "seed"
FILES = {"arc": "test-ai2_arc.parquet", "squad": "test-squad_v2.parquet", "openmath": "test-OpenMathInstruct-2.parquet"}


def load_rows(task: str, n: int, split: str = "test") -> list[dict]:
    df = pd.read_parquet(SEED / FILES[task].replace("test-", f"{split}-")).head(n).reset_index(drop=True)
    df["id"] = df.index.astype(str)
    return df.to_dict("records")


def train_boxed_tiny(base_dir: str | Path, out_dir: str | Path, steps: int = 60, n_per_task: int = 32, seed: int = 0,
                     task_names: tuple[str, ...] = tuple(FILES), batch: int = 8, lr: float = 3e-3,
                     eos: bool = True) -> float:
    r"""Fine-tune the tiny model to answer ``\boxed{<gold>}<|im_end|>`` on a few train items of each task
    (``eos=False``: without ``<|im_end|>``, so it rambles on after the box, as the study's models often did).
    The loss covers only the answer tokens, and only their hidden states go through the (huge-vocab)
    head, so a step costs little on a CPU. Saves a plain HF folder to ``out_dir``."""
    torch.manual_seed(seed)
    tok = modeling.load_tokenizer(base_dir)
    model = modeling.load_causal_lm(base_dir, torch.device("cpu"), for_training=True)
    examples = []
    for task in task_names:
        for row in load_rows(task, n_per_task, "train"):
            prompt = tok(generation.chat_prompt(tok, task, row), add_special_tokens=False)["input_ids"]
            target = tok(tasks.format_target(task, row) + ("<|im_end|>" if eos else ""), add_special_tokens=False)["input_ids"]
            examples.append((prompt, target))
    model.get_input_embeddings().weight.requires_grad_(False)  # the 150k-row (tied) table: its dense grad is the cost
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        chosen = [examples[i] for i in torch.randint(len(examples), (batch,), generator=g).tolist()]
        loss = 0.0
        for prompt, target in chosen:
            ids = torch.tensor([prompt + target])
            hidden = model.model(input_ids=ids).last_hidden_state[0, len(prompt) - 1: -1]
            loss = loss + torch.nn.functional.cross_entropy(model.lm_head(hidden), torch.tensor(target))
        opt.zero_grad()
        (loss / batch).backward()
        opt.step()
    model.eval()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return float(loss.detach()) / batch


def run_way(model, tok, task: str, rows: list[dict], batch_size: int, max_new: int, early_stop: bool) -> dict:
    prompts = [generation.chat_prompt(tok, task, r) for r in rows]
    t0 = time.perf_counter()
    gens = generation.generate(model, tok, prompts, max_new, batch_size, stop_at_boxed=early_stop)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "samples_per_s": len(rows) / wall,
            "mean_generated_tokens": sum(g.generated_tokens for g in gens) / len(gens),
            "parsed": [tasks.parse_answer(task, g.text) for g in gens]}


def bench_model(label: str, model_dir: Path, items: int, baseline_items: int, batch_size: int, max_new: int) -> dict:
    tok = modeling.load_tokenizer(model_dir, padding_side="left")
    model = modeling.load_causal_lm(model_dir, torch.device("cpu"))
    out = {}
    for task in FILES:
        rows = load_rows(task, items)
        ours = run_way(model, tok, task, rows, batch_size, max_new, early_stop=True)
        study = run_way(model, tok, task, rows[:baseline_items], 1, max_new, early_stop=False)
        n = len(study["parsed"])
        agree = sum(a == b for a, b in zip(ours["parsed"][:n], study["parsed"]))
        gold = [tasks.gold_answer(task, r) for r in rows]
        out[task] = {
            "items_ours": len(rows), "items_study": n,
            "ours_samples_per_s": round(ours["samples_per_s"], 3), "study_samples_per_s": round(study["samples_per_s"], 3),
            "ratio": round(ours["samples_per_s"] / study["samples_per_s"], 1),
            "ours_mean_tokens": round(ours["mean_generated_tokens"], 1),
            "study_mean_tokens": round(study["mean_generated_tokens"], 1),
            "parsed_agree": f"{agree}/{n}",
            "ours_format_ok": sum(p is not None for p in ours["parsed"]),
            "ours_correct": sum(p is not None and p == g for p, g in zip(ours["parsed"], gold)),
        }
        print(label, task, json.dumps(out[task]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=200, help="items per task for our evaluator")
    ap.add_argument("--baseline-items", type=int, default=20, help="items per task for the study's way")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both ways")
    ap.add_argument("--models", default="boxed,rambling,random")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                           "torch": torch.__version__},
               "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "tiny"
        modeling.make_tiny_qwen3(str(SHARED / "tokenizers" / "qwen3"), base, seed=0)
        dirs = {"random": base}
        for label, eos in (("boxed", True), ("rambling", False)):
            if label in args.models:
                t0 = time.perf_counter()
                loss = train_boxed_tiny(base, Path(tmp) / label, steps=40, batch=4, lr=1e-2, eos=eos)
                results[f"{label}_finetune"] = {"seconds": round(time.perf_counter() - t0, 1), "final_loss": round(loss, 4)}
                dirs[label] = Path(tmp) / label
        for label in args.models.split(","):
            results[label] = bench_model(label, dirs[label], args.items, args.baseline_items, args.batch_size,
                                         args.max_new_tokens)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
