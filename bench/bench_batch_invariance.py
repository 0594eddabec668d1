r"""How often greedy answers change when a prompt is generated in a batch instead of alone, on the
real model (SmolLM2-135M-Instruct, dequantized from its GGUF), for the precisions the quantizer
makes: full precision (control), bitsandbytes INT8 (LLM.int8) and 4-bit NF4.

Why it can happen: LLM.int8 splits each matmul's input into outlier columns (any |value| above the
threshold, 6.0, *anywhere in the batch*) kept in 16-bit and the rest in int8 with per-row scales;
which columns are outliers depends on the batch's other rows, so a row's logits depend on its
companions. 4-bit weight-only and fp32 only see the usual float differences of other matmul
shapes (padding, batch size), which can still flip a near-tie argmax.

Same evaluator code (``services.evaluator.generation.generate``: sorted by length, left padding,
stop at the closed box), same ARC items, same greedy decoding; batch_size N vs 1. Reports, per
precision, items whose generated text differs, whose parsed ``\boxed{}`` answer differs, whose
first option letter differs (SmolLM2-135M answers "A. ..." rather than boxing), and accuracy both ways.

Run: ``.venv/bin/python -m bench.bench_batch_invariance [--items 64 --batch-size 8 --max-new-tokens 48]``
(CPU; needs the model: ``ftlab model import --gguf smollm2`` caches it, as the tests' fixture does).
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import time

import pandas as pd
import torch

from services.common.data import tasks
from services.evaluator import generation

SEED_TEST = "../shared/datasets/seed/test-ai2_arc.parquet"


def load(model_dir, precision: str):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    q = {"fp32": None,
         "int8": BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0),
         "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.float32)}[precision]
    kw = {"quantization_config": q, "device_map": {"": "cpu"}} if q else {}
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kw).eval()


def _choice(text: str) -> str | None:
    m = re.search(r"\b([A-D])\b", text)
    return m.group(1) if m else None


def measure(model, tok, task, rows, batch_size: int, max_new_tokens: int) -> dict:
    prompts = [generation.chat_prompt(tok, task, r) for r in rows]
    golds = [tasks.gold_answer(task, r) for r in rows]
    t0 = time.time()
    batched = generation.generate(model, tok, prompts, max_new_tokens, batch_size)
    t1 = time.time()
    alone = generation.generate(model, tok, prompts, max_new_tokens, 1)
    t2 = time.time()
    pb = [tasks.parse_answer(task, g.text) for g in batched]
    pa = [tasks.parse_answer(task, g.text) for g in alone]
    # SmolLM2-135M rarely writes \boxed{}: its choice is the first option letter it writes ("A. ...")
    cb, ca = [_choice(g.text) for g in batched], [_choice(g.text) for g in alone]
    return {"items": len(rows), "batch_size": batch_size, "max_new_tokens": max_new_tokens,
            "text_differs": sum(a.text != b.text for a, b in zip(alone, batched)),
            "answer_differs": sum(a != b for a, b in zip(pa, pb)),
            "choice_differs": sum(a != b for a, b in zip(ca, cb)),
            "accuracy_batched": sum(p == g for p, g in zip(pb, golds)) / len(rows),
            "accuracy_alone": sum(p == g for p, g in zip(pa, golds)) / len(rows),
            "batched_s": round(t1 - t0, 1), "alone_s": round(t2 - t1, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--precisions", default="int8,nf4,fp32")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a small shared CPU)")
    args = p.parse_args(argv)
    from services.common.torch_utils.gguf_import import converted_smollm2
    from services.common.torch_utils.modeling import load_tokenizer
    model_dir = converted_smollm2()
    tok = load_tokenizer(model_dir, padding_side="left")
    task = tasks.get_task("ai2_arc")
    rows = pd.read_parquet(SEED_TEST).head(args.items).to_dict("records")
    torch.set_num_threads(args.threads)
    out = {"model": "SmolLM2-135M-Instruct", "task": task.name, "cpu": platform.processor() or platform.machine(),
           "torch": torch.__version__, "results": {}}
    for precision in args.precisions.split(","):
        torch.manual_seed(0)
        out["results"][precision] = r = measure(load(model_dir, precision), tok, task, rows, args.batch_size,
                                                args.max_new_tokens)
        print(f"{precision:5s} text differs {r['text_differs']}/{r['items']}, answer differs "
              f"{r['answer_differs']}/{r['items']}, choice letter differs {r['choice_differs']}/{r['items']}, accuracy batched {r['accuracy_batched']:.3f} vs alone "
              f"{r['accuracy_alone']:.3f} ({r['batched_s']} s vs {r['alone_s']} s)", flush=True)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
