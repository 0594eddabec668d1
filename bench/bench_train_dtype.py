"""bf16 against fp32 training on this CPU: ftlab's trainer (the real recipe, LoRA r8 on q,k,v,o,
dropout 0) with the spec's ``dtype: bfloat16`` (the frozen layers compute in bf16, the rest in fp32:
services/trainer/cpu_bf16.py) and with fp32, the same rows, hyperparameters and seed, A/B
alternated in one process. Prints tokens/s of each, their ratio and the loss curves' largest
difference (absolute and relative to the loss), so "use bf16 where the loss curve agrees with
fp32" is a number, not a guess.

    .venv/bin/python -m bench.bench_train_dtype [--model real|tiny] [--steps 8] [--pairs 2]

The same store and spec as bench/bench_peers_train.py (tokens/s over the training loop only).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench import bench_peers_train as peers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["real", "tiny"], default="real")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--accum", type=int, default=2)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--pairs", type=int, default=2, help="fp32/bf16 pairs, the order flipping each pair")
    p.add_argument("--json")
    args = p.parse_args(argv)
    which = args.model
    runs = {"float32": [], "bfloat16": []}
    with tempfile.TemporaryDirectory() as tmp:
        store = peers.make_store(Path(tmp), which)
        for i in range(args.pairs):
            order = ["float32", "bfloat16"] if i % 2 == 0 else ["bfloat16", "float32"]
            for dtype in order:
                args.dtype = dtype
                r = peers.run_ours(store, which, args, f"bench-{dtype}-{i}")
                runs[dtype].append(r)
                print(json.dumps({"pair": i, "dtype": dtype, **r}), file=sys.stderr, flush=True)
    fp, bf = runs["float32"], runs["bfloat16"]
    tps = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    diffs = [abs(a - b) for a, b in zip(fp[-1]["losses"], bf[-1]["losses"])]
    rel = [d / max(abs(a), 1e-9) for d, a in zip(diffs, fp[-1]["losses"])]
    print(f"| dtype | tokens/s (median of {args.pairs}) | MFU | final loss |\n|---|---:|---:|---:|")
    for k, v in runs.items():
        print(f"| {k} ({v[-1]['dtype']}) | {tps[k]:.0f} | {100 * v[-1]['mfu']:.1f}% | {v[-1]['losses'][-1]:.4f} |")
    print(f"\nbf16 / fp32 tokens/s: **{tps['bfloat16'] / tps['float32']:.2f}×**; loss curves over "
          f"{len(diffs)} steps: max |Δ| {max(diffs):.4f} (max relative {100 * max(rel):.1f}%)")
    print("fp32 losses:", [round(x, 4) for x in fp[-1]["losses"]])
    print("bf16 losses:", [round(x, 4) for x in bf[-1]["losses"]])
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
