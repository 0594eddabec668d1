"""Training peer: ftlab's trainer vs TRL's ``SFTTrainer`` on the same rows, hyperparameters and
seed, A/B alternated in one process. Both train LoRA (q,k,v,o; dropout 0) with a completion-only
loss on the very token ids our recipe encodes (TRL gets them pre-tokenized, with our labels), the
same batch size, accumulation, learning rate, schedule, optimizer and sampler seed — so the loss
curves must agree step by step, and the tokens/s ratio is the speed of the same work.

    .venv/bin/python -m bench.bench_peers_train [--model tiny|real|both] [--steps 8] [--pairs 1] [--dtype float32]
        [--trl-dtype D] [--trl-defaults]

``ours`` is ``services.trainer.recipe.run`` (fetch, train, save, commit: everything the job does);
its tokens/s is over the training loop only, as TRL's. TRL must be installed (``pip install
trl==1.16.0``: it pulls no other torch or transformers). MFU (services/common/torch_utils/mfu.py) counts for
both the FLOPs the task needs (the LM head at answer tokens only), so it is comparable: TRL
computes logits at every position, work the completion-only loss then discards.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FTLAB_DEVICE", "cpu")
os.environ.setdefault("FTLAB_MODEL_CACHE_GB", "0")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FTLAB_SHARED_DIR", ROOT.parent / "shared"))
MODELS = {"tiny": "Qwen3-tiny-base", "real": "SmolLM2-135M-Instruct"}


class _Events:
    def put(self, msg):
        pass


def make_store(root: Path, which: str):
    from services.common.torch_utils import modeling
    from services.common.data.importing import import_dataset
    from services.common.storage.store import LocalStore
    store = LocalStore(root / "store")
    store.ensure_buckets()
    if which == "tiny":
        with tempfile.TemporaryDirectory() as d:
            modeling.make_tiny_qwen3(str(SHARED / "tokenizers" / "qwen3"), d, seed=0)
            modeling.commit_base_model(store, MODELS[which], d, {"source": "tiny-random-qwen3", "seed": 0})
    else:
        from services.common.torch_utils.gguf_import import converted_smollm2, read_origin
        d = converted_smollm2()
        modeling.commit_base_model(store, MODELS[which], d, read_origin(d))
    import_dataset(store, "arc", "seed", SHARED / "datasets" / "seed")
    return store


def spec(which: str, args, name: str, dtype: str | None = None) -> dict:
    return {"base_model": MODELS[which], "dataset": "arc", "peft_method": "lora",
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "max_steps": args.steps,
            "per_device_batch_size": args.batch, "gradient_accumulation_steps": args.accum,
            "learning_rate": 2e-4, "warmup_ratio": 0.0, "seed": 0, "save_steps": 0,
            "max_seq_length": 512, "train_limit": args.rows, "output_name": name,
            "dtype": dtype or args.dtype}  # explicit: auto is bf16 for an adapter on a CPU with native bf16


def run_ours(store, which: str, args, name: str) -> dict:
    from services.common.jobs.child import JobContext
    from services.trainer import recipe
    from services.trainer.config import resolve_train_spec
    cfg = resolve_train_spec(spec(which, args, name), store)
    with tempfile.TemporaryDirectory() as wd:
        recipe.run(JobContext("bench", store, _Events(), wd), cfg)
    meta = json.loads(store.get_bytes("models", f"{name}/training_metadata.json"))
    store.delete_prefix("models", f"{name}/")
    return {"tokens": meta["tokens_seen"], "train_s": meta["train_time_s"], "tokens_per_s": meta["tokens_per_s"],
            "losses": [p["loss"] for p in meta["loss_curve"]], "mfu": meta["mfu"].get("mfu"), "dtype": meta["dtype"],
            "peak_gflops": meta["mfu"].get("peak_gflops")}


def run_trl(store, which: str, args, name: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from services.common.data import importing as data_import
    from services.common.torch_utils import mfu
    from services.common.torch_utils import modeling
    from services.common.data import tasks
    from services.trainer import recipe
    from services.trainer import loop
    from services.trainer.config import OPTIMIZERS, TrainConfig, resolve_train_spec
    cfg = resolve_train_spec(spec(which, args, name, args.trl_dtype or args.dtype), store)
    task = tasks.get_task(cfg["task"])
    with tempfile.TemporaryDirectory() as wd:
        base_dir, _ = modeling.fetch_model(store, cfg["base_model"], wd)
        tok = modeling.load_tokenizer(base_dir, padding_side="right")
        rows = data_import.load_split(store, cfg["dataset"], "train").head(cfg["train_limit"]).to_dict("records")
        examples = [recipe.encode_example(tok, task, r, cfg["max_seq_length"], True) for r in rows]
        # The adapter is built as our trainer builds it (same seed, same peft config), so the two runs
        # differ in the training loop only. (Measured: SFTTrainer's own peft_config gave the same
        # curve; what made the curves part was its bf16 and checkpointing defaults, below.)
        set_seed(cfg["seed"])
        model = loop.build_model(TrainConfig.from_dict(cfg), base_dir, torch.device("cpu"))
        sft = SFTConfig(output_dir=str(Path(wd) / "trl"), max_steps=cfg["max_steps"],
                        per_device_train_batch_size=cfg["per_device_batch_size"],
                        gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
                        learning_rate=cfg["learning_rate"], weight_decay=cfg["weight_decay"], warmup_steps=0,
                        lr_scheduler_type=cfg["lr_scheduler"], max_grad_norm=cfg["max_grad_norm"],
                        optim=OPTIMIZERS[cfg["optimizer"]], seed=cfg["seed"], logging_steps=1,
                        save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
                        completion_only_loss=True, packing=False, max_length=cfg["max_seq_length"],
                        dataloader_num_workers=0,
                        # SFTConfig's own defaults differ from TrainingArguments': bf16 autocast and
                        # gradient checkpointing on. Ours trains with neither, so neither does TRL here
                        # (with them on, its loss curve followed our bf16 run's, not our fp32 one's).
                        **({} if args.trl_defaults else {"bf16": False, "gradient_checkpointing": False}))
        trainer = SFTTrainer(model=model, args=sft, train_dataset=Dataset.from_list(examples),
                             processing_class=tok)
        seen = {"tokens": 0, "rows": 0, "examples": 0}
        collator = trainer.data_collator

        def counting(batch):
            seen["tokens"] += sum(len(b["input_ids"]) for b in batch)
            seen["examples"] += len(batch)
            out = collator(batch)
            seen["rows"] += int((out["labels"][:, 1:] != -100).sum())  # the logits the loss needs
            return out
        trainer.data_collator = counting
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        flops = mfu.training_flops(trainer.model.config.to_dict(), seen["tokens"], seen["rows"],
                                   seen["tokens"] / max(seen["examples"], 1), full=False, trainable_params=trainable)
        m = mfu.mfu(flops, train_s, args.trl_dtype or args.dtype)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens": seen["tokens"], "train_s": train_s, "tokens_per_s": seen["tokens"] / train_s,
            "losses": losses, "mfu": m["mfu"], "peak_gflops": m["peak_gflops"]}


def compare(which: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp), which)
        pairs = []
        for i in range(args.pairs):  # A/B alternated: contention on a shared machine hits both
            ours = run_ours(store, which, args, f"bench-ours-{i}")
            trl = run_trl(store, which, args, f"bench-trl-{i}")
            pairs.append((ours, trl))
            print(json.dumps({"model": which, "pair": i, "ours": ours, "trl": trl}), file=sys.stderr, flush=True)
    ratios = sorted(o["tokens_per_s"] / t["tokens_per_s"] for o, t in pairs)
    ours, trl = pairs[-1]
    diff = max((abs(a - b) for a, b in zip(ours["losses"], trl["losses"])), default=float("nan"))
    return {"model": which, "ratio": ratios[len(ratios) // 2], "ratios": ratios,
            "ours_tokens_per_s": ours["tokens_per_s"], "trl_tokens_per_s": trl["tokens_per_s"],
            "same_tokens": ours["tokens"] == trl["tokens"], "steps": len(ours["losses"]),
            "max_loss_diff": diff, "final_loss": ours["losses"][-1] if ours["losses"] else None,
            "ours_mfu": ours["mfu"], "trl_mfu": trl["mfu"], "peak_gflops": ours["peak_gflops"],
            "dtype": args.dtype, "trl_dtype": args.trl_dtype or args.dtype, "trl_defaults": args.trl_defaults}


def rows(args) -> list[dict]:
    """The table rows (bench/run_all.py prints them with the other peers)."""
    which = ["tiny", "real"] if args.model == "both" else [args.model]
    return [compare(w, args) for w in which]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["tiny", "real", "both"], default="both")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--accum", type=int, default=2)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--pairs", type=int, default=1)
    p.add_argument("--dtype", default="float32", help="the training dtype (the spec's dtype), both unless --trl-dtype")
    p.add_argument("--trl-dtype", help="TRL's model built with this dtype instead (e.g. ours bfloat16 vs TRL float32)")
    p.add_argument("--trl-defaults", action="store_true",
                   help="leave SFTConfig's bf16 autocast and gradient checkpointing on (its defaults)")
    p.add_argument("--json")
    return p


def format_row(r: dict) -> str:
    agree = f"max \\|Δloss\\| {r['max_loss_diff']:.1e} over {r['steps']} steps" + ("" if r["same_tokens"] else ", tokens differ!")
    trl = f"TRL SFTTrainer, {r.get('trl_dtype', r.get('dtype', 'float32'))}" + (
        " (its defaults: bf16 autocast, gradient checkpointing)" if r.get("trl_defaults") else "")
    return (f"| training LoRA r8, {r['model']}, ours {r.get('dtype', 'float32')} | ftlab trainer vs {trl} | **{r['ratio']:.2f}×** "
            f"({r['ours_tokens_per_s']:.0f} / {r['trl_tokens_per_s']:.0f} tok/s; MFU {100 * r['ours_mfu']:.1f}% / "
            f"{100 * r['trl_mfu']:.1f}%) | {agree} |")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    results = rows(args)
    print("| what | vs | ratio (ours / peer) | agreement |\n|---|---|---:|---|")
    for r in results:
        print(format_row(r))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
