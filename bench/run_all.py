"""`make bench`: every benchmark, one after the other, each as its own process (as you would run
it by hand: `.venv/bin/python -m bench.bench_<name>`). Results go to docs/BENCHMARKS.md by hand:
each benchmark prints the table its section shows. Then the peers table: one row per comparison
with a tool users would pick instead, each a ratio (ours / peer) with the agreement beside it."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = ["bench_trainer", "bench_quantizer", "bench_evaluator", "bench_overhead", "bench_warm_start",
              "bench_load", "bench_real_model", "bench_train_dtype"]
# bench_eval_peers runs as part of the peers table (in bf16); `make bench BENCH=bench_eval_peers` runs it alone
# benchmarks that need peers installed apart (`make bench` makes .venv-bench): name -> interpreter
ROOT = Path(__file__).resolve().parents[1]
PYTHONS = {"bench_eval_peers": ROOT / ".venv-bench" / "bin" / "python"}
PEERS = "peers"  # `make bench BENCH=peers`: only the peers table


def main() -> int:
    if any(a.startswith("-") for a in sys.argv[1:]):
        print(__doc__ + f"\n\nusage: python -m bench.run_all [NAME ...]  (names: {' '.join(BENCHMARKS)} {PEERS})")
        return 0 if {"-h", "--help"} & set(sys.argv[1:]) else 2
    names = sys.argv[1:] or BENCHMARKS + [PEERS]
    failed = []
    for name in [n for n in names if n != PEERS]:
        print(f"\n===== bench.{name}", flush=True)
        t0 = time.time()
        python = PYTHONS.get(name, Path(sys.executable))
        if not python.exists():
            print(f"===== bench.{name}: skipped, {python} missing (make bench creates it)", flush=True)
            continue
        rc = subprocess.call([str(python), "-m", f"bench.{name}"])
        print(f"===== bench.{name}: exit {rc} in {time.time() - t0:.0f}s", flush=True)
        if rc:
            failed.append(name)
    if PEERS in names:
        rows = []
        for collect in PEER_ROWS:
            try:
                rows += collect()
            except Exception as exc:  # one peer missing (not installed) must not hide the others
                print(f"peer rows {collect.__name__} failed: {exc}", flush=True)
                failed.append(collect.__name__)
        print("\n===== peers (ratio = ours / peer; agreement of losses or answers beside it)")
        print("| what | vs | ratio (ours / peer) | agreement |\n|---|---|---:|---|")
        for row in rows:
            print(row)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


# --------------------------------------------------------------------------- training peers

def training_peer_rows() -> list[str]:
    """ftlab trainer vs TRL SFTTrainer on the tiny and the real model, both fp32; and, on a CPU
    with native bf16, ours with ``dtype: bfloat16`` against TRL in fp32 (bench/bench_peers_train.py)."""
    from bench.bench_peers_train import format_row
    from services.common.hardware.cpu_features import cpu_has_bf16
    runs = [["--model", "both"]]
    if cpu_has_bf16():
        runs.append(["--model", "real", "--dtype", "bfloat16", "--trl-dtype", "float32"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, extra in enumerate(runs):
            out = Path(tmp) / f"train-{i}.json"
            rc = subprocess.call([sys.executable, "-m", "bench.bench_peers_train", *extra, "--json", str(out)])
            if rc:
                raise RuntimeError(f"bench.bench_peers_train {' '.join(extra)} exited {rc}")
            rows += [format_row(r) for r in json.loads(out.read_text())]
    return rows


# --------------------------------------------------------------------------- evaluation peers

def evaluation_peer_rows() -> list[str]:
    """ftlab's evaluator engines vs lm-eval's HF backend and vLLM called directly, on the real model
    in bf16 (the evaluator's dtype on a CPU with native bf16; bench/bench_eval_peers.py)."""
    python = PYTHONS["bench_eval_peers"]
    if not python.exists():
        raise RuntimeError(f"{python} missing (make bench creates it)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        rc = subprocess.call([str(python), "-m", "bench.bench_eval_peers", "--model", "real", "--dtype", "bfloat16",
                              "--json", str(out)])
        if rc:
            raise RuntimeError(f"bench.bench_eval_peers exited {rc}")
        result = json.loads(out.read_text())
    ways = {r["way"]: r for r in result["rows"]}
    what = f"evaluation, SmolLM2 ({result['args']['dtype']}, {result['args']['items']} ARC items)"

    def agree(r):
        return (f"first answer letter {r['first_letter_agree_with_lm_eval']}, parsed {r['parsed_agree_with_lm_eval']}, "
                f"identical texts {r['identical_texts_with_lm_eval']} (vs lm-eval)")
    rows = []
    for ours, peer in (("ftlab vLLM", "lm-eval HF"), ("ftlab HF", "lm-eval HF"), ("ftlab vLLM", "vLLM direct")):
        if ours in ways and peer in ways:
            ratio = ways[ours]["items_per_s"] / ways[peer]["items_per_s"]
            rows.append(f"| {what} | {ours} vs {peer} | **{ratio:.2f}×** ({ways[ours]['items_per_s']:.2f} / "
                        f"{ways[peer]['items_per_s']:.2f} items/s) | {agree(ways[ours])} |")
    return rows


PEER_ROWS = [training_peer_rows, evaluation_peer_rows]  # each returns table rows


if __name__ == "__main__":
    sys.exit(main())
