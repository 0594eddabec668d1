r"""Evaluation speed against the peers a user would pick instead, side by side in one process:

- **ftlab vLLM**: the evaluator's vLLM engine (``services.evaluator.engines.VLLMGenerator``, the
  recipe's code: the task's stop rule, token-id prompts);
- **ftlab HF**: the evaluator's HF engine (``services.evaluator.generation.generate``);
- **lm-eval HF**: lm-evaluation-harness's Hugging Face backend (``lm_eval.models.huggingface.HFLM
  .generate_until``: sorted batches, left padding, stop at EOS);
- **vLLM direct**: ``vllm.LLM.generate`` on the prompt strings, stop at EOS, as a user would call it.

Same model, same chat-templated prompts (first N ARC seed test items), same batch size and
``max_new_tokens``, greedy, same dtype; the ways run A/B alternating (the order flips every round)
and each way's time is its median over rounds. Each row gives items/s, the ratio to lm-eval's HF
backend, and the parsed-answer agreement (and identical texts) with lm-eval's outputs.

Needs the bench environment (lm-eval layered over the evaluator's vLLM environment; ``make bench`` creates it):
``.venv-bench/bin/python -m bench.bench_eval_peers [--model real|tiny] [--items 50] [--batch-size 8]``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ARC = "ai2_arc"


def ways(model_dir: Path, dtype: str, batch: int, max_new: int, with_vllm: bool = True):
    """name -> callable(prompts) -> list of generated texts; built once, timed later."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from services.common.torch_utils import modeling
    from services.evaluator import engines, generation
    tok = modeling.load_tokenizer(model_dir, padding_side="left")
    vgen = engines.VLLMGenerator(model_dir, tok, dtype, batch, max_new) if with_vllm else None
    hf = modeling.load_causal_lm(model_dir, torch.device("cpu")).to(getattr(torch, dtype))
    lm = HFLM(pretrained=hf, tokenizer=tok, batch_size=batch, device="cpu", max_length=4096 + max_new)
    eos_text = tok.decode([tok.eos_token_id])

    def lm_eval_hf(prompts):
        reqs = [Instance(request_type="generate_until", doc={}, idx=i,
                         arguments=(p, {"until": [eos_text], "max_gen_toks": max_new, "do_sample": False}))
                for i, p in enumerate(prompts)]
        return lm.generate_until(reqs, disable_tqdm=True)

    def vllm_direct(prompts):
        from vllm import SamplingParams
        outs = vgen.llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_new), use_tqdm=False)
        return [o.outputs[0].text for o in outs]

    out = {"ftlab HF": lambda prompts: [g.text for g in generation.generate(hf, tok, prompts, max_new, batch)],
           "lm-eval HF": lm_eval_hf}
    if vgen:
        out = {"ftlab vLLM": lambda prompts: [g.text for g in vgen.generate(prompts, max_new, batch)], **out,
               "vLLM direct": vllm_direct}
    return out, tok


def model_folder(which: str, tmp: str) -> Path:
    if which == "real":
        from services.common.torch_utils.gguf_import import converted_smollm2
        return converted_smollm2()
    from services.common.torch_utils import modeling
    shared = Path(os.environ.get("FTLAB_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
    out = Path(tmp) / "tiny"
    modeling.make_tiny_qwen3(str(shared / "tokenizers" / "qwen3"), out, seed=0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="real", choices=["real", "tiny"])
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--skip", default="", help="comma-separated ways to leave out")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    from bench.bench_evaluator import load_rows
    from services.common.data import tasks
    from services.evaluator import engines, generation
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = model_folder(args.model, tmp)
        t0 = time.perf_counter()
        config = json.loads((model_dir / "config.json").read_text())
        refusal = engines.vllm_refusal(config, {}, adapter_only=False)
        if refusal:  # the tiny Qwen3's head_dim 16 is below vLLM's CPU attention's sizes
            print(f"vLLM ways skipped: {refusal}", flush=True)
        fns, tok = ways(model_dir, args.dtype, args.batch_size, args.max_new_tokens, with_vllm=not refusal)
        setup_s = time.perf_counter() - t0
        fns = {k: v for k, v in fns.items() if k not in args.skip.split(",")}
        rows = load_rows("arc", args.items)
        prompts = [generation.chat_prompt(tok, ARC, r) for r in rows]
        times: dict[str, list[float]] = {k: [] for k in fns}
        texts: dict[str, list[str]] = {}
        for r in range(args.rounds):
            order = list(fns) if r % 2 == 0 else list(reversed(fns))
            for name in order:
                t = time.perf_counter()
                texts[name] = fns[name](prompts)
                times[name].append(time.perf_counter() - t)
                print(f"round {r} {name}: {times[name][-1]:.2f}s", flush=True)
    ref = "lm-eval HF" if "lm-eval HF" in fns else next(iter(fns))
    parsed = {k: [tasks.parse_answer(ARC, t) for t in v] for k, v in texts.items()}
    letters = {k: [tasks.parse_answer(ARC, "\\boxed{" + t.strip()[:1] + "}") for t in v] for k, v in texts.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "load_avg": os.getloadavg()}, "args": vars(args), "setup_s": round(setup_s, 1), "rows": []}
    n = len(prompts)
    for name in fns:
        out["rows"].append({
            "way": name, "items_per_s": round(n / med[name], 3), "x_lm_eval_hf": round(med[ref] / med[name], 2),
            "rounds_s": [round(x, 2) for x in times[name]],
            "parsed_agree_with_lm_eval": f"{sum(a == b for a, b in zip(parsed[name], parsed[ref]))}/{n}",
            "first_letter_agree_with_lm_eval": f"{sum(a == b for a, b in zip(letters[name], letters[ref]))}/{n}",
            "identical_texts_with_lm_eval": f"{sum(a.strip() == b.strip() for a, b in zip(texts[name], texts[ref]))}/{n}",
            "parsed_answers": sum(p is not None for p in parsed[name]),
        })
    print("| way | items/s | × lm-eval HF | parsed answers agree | first letter agrees | identical texts | boxed answers |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in out["rows"]:
        print(f"| {r['way']} | {r['items_per_s']} | {r['x_lm_eval_hf']} | {r['parsed_agree_with_lm_eval']} | "
              f"{r['first_letter_agree_with_lm_eval']} | {r['identical_texts_with_lm_eval']} | {r['parsed_answers']}/{n} |")
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
