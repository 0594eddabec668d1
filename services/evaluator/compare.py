"""``ftlab compare EVAL_A EVAL_B``: two evaluations paired on the items they share.

An EVAL is ``model/eval_id`` or ``s3://evaluations/model/eval_id/``. Per shared task: every headline
metric of A and B recomputed on the shared items, the difference B - A with a paired-bootstrap 95%
CI, and for accuracy-type metrics the exact McNemar p-value. Torch-free (CLI side).
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from services.common.storage import artifacts
from services.common.data import tasks
from services.common.contract.errors import NotFoundError, ValidationError
from services.common.storage.parquet_io import frame_from_parquet_bytes
from services.common.storage.store import ObjectStore, parse_uri
from services.common.data.task_types import get_type
from services.common.data.task_types.base import DEFAULT_LABELS as LABELS
from services.common.contract.validation import Problems
from services.evaluator import stats

BUCKET = "evaluations"


def eval_prefix(ref: str) -> str:
    if ref.startswith("s3://"):
        bucket, key = parse_uri(ref)
        if bucket != BUCKET:
            raise ValidationError(f"{ref}: an evaluation lives in s3://{BUCKET}/, not s3://{bucket}/")
        ref = key
    ref = ref.strip("/")
    if ref.count("/") != 1 or not all(ref.split("/")):
        raise ValidationError(f"{ref!r}: expected MODEL/EVAL_ID or s3://{BUCKET}/MODEL/EVAL_ID/")
    return ref


def load_eval(store: ObjectStore, ref: str) -> tuple[dict[str, Any], pd.DataFrame]:
    prefix = eval_prefix(ref)
    """(metrics.json, predictions) of a committed evaluation, both checked against its manifest's
    sha256 (artifacts.IntegrityError names the file and both digests)."""
    manifest = artifacts.read_manifest(store, BUCKET, prefix)
    if manifest is None:
        raise NotFoundError(f"evaluation s3://{BUCKET}/{prefix}/ not found (no manifest.json)")
    metrics = artifacts.read_json(store, BUCKET, prefix, "metrics.json", manifest)
    preds = frame_from_parquet_bytes(artifacts.read_file(store, BUCKET, prefix, "predictions.parquet", manifest),
                                     f"s3://{BUCKET}/{prefix}/predictions.parquet")
    return metrics, preds


def _nullable(values) -> list:
    return [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in values]


# What shapes the generations besides the model: (label, where it is in metrics.json, its default).
GENERATION_SETTINGS = (
    ("max_new_tokens", ("spec", "max_new_tokens"), None),
    ("engine", ("spec", "engine"), "hf"),
    ("kv_cache_dtype", ("spec", "kv_cache_dtype"), "auto"),
    ("batch_size", ("spec", "batch_size"), None),
    ("dtype", ("hardware", "dtype"), None),
)


def setting_differences(ma: dict[str, Any], mb: dict[str, Any]) -> list[dict[str, Any]]:
    """The generation settings on which two evaluations' ``metrics.json`` differ, as
    ``[{"setting", "a", "b"}]``. A difference means B - A mixes the model's change with the
    setting's (a shorter ``max_new_tokens`` cuts answers; a quantized KV cache or another dtype
    or batch composition changes logits), so the comparison is not of models alone."""
    def get(m, path, default):
        v = m
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        return default if v is None else v
    diffs = []
    for label, path, default in GENERATION_SETTINGS:
        a, b = get(ma, path, default), get(mb, path, default)
        if a != b:
            diffs.append({"setting": label, "a": a, "b": b})
    return diffs


def _check_refs(store: ObjectStore, refs: tuple[str, ...]) -> None:
    """Both references at once: malformed ones, then missing ones with the evaluations their
    model has (ValidationError listing every problem, or NotFoundError)."""
    p = Problems()
    for ref in refs:
        try:
            prefix = eval_prefix(ref)
        except ValidationError as exc:
            p.add(exc.problems)
            continue
        if artifacts.read_manifest(store, BUCKET, prefix) is None:
            model = prefix.split("/")[0]
            held = sorted({k.split("/")[1] for k in store.list_keys(BUCKET, model + "/")
                           if k.endswith("/manifest.json") and k.count("/") == 2})
            p.not_found(f"evaluation s3://{BUCKET}/{prefix}/ not found (no manifest.json): "
                        + (f"{model} has: {', '.join(held)}" if held else f"no evaluation of {model!r} in storage "
                           "(ftlab eval list)"))
    p.raise_if_any()


def compare(store: ObjectStore, ref_a: str, ref_b: str, n_resamples: int = stats.DEFAULT_RESAMPLES,
            seed: int = 0) -> dict[str, Any]:
    _check_refs(store, (ref_a, ref_b))
    (ma, pa), (mb, pb) = load_eval(store, ref_a), load_eval(store, ref_b)
    out: dict[str, Any] = {"a": eval_prefix(ref_a), "b": eval_prefix(ref_b), "resamples": n_resamples,
                           "seed": seed, "settings_differ": setting_differences(ma, mb), "tasks": {}}
    shared = [t for t in ma["datasets"] if t in mb["datasets"]]
    if not shared:
        raise ValidationError(f"{out['a']} and {out['b']} share no task ({list(ma['datasets'])} vs {list(mb['datasets'])})")
    for task in shared:
        ttype = ma["datasets"][task]["type"]
        a, b = pa[pa.task == task], pb[pb.task == task]
        joined = a.merge(b, on="id", suffixes=("_a", "_b"))
        entry: dict[str, Any] = {"type": ttype, "items_a": len(a), "items_b": len(b), "shared_items": len(joined)}
        if len(joined):
            golds_a, golds_b = _nullable(joined.gold_a), _nullable(joined.gold_b)
            entry["gold_mismatches"] = sum(x != y for x, y in zip(golds_a, golds_b))
            entry["prompt_mismatches"] = int((joined.prompt_sha256_a != joined.prompt_sha256_b).sum())
            scored = golds_a
            if get_type(ttype).multi_gold:  # every gold answer (older predictions have only the first)
                scored = (list(map(list, joined.golds_a)) if "golds_a" in joined
                          else [get_type(ttype).canonical_gold(None, g) for g in golds_a])
            entry["metrics"] = stats.paired(ttype, _nullable(joined.parsed_a), _nullable(joined.parsed_b), scored,
                                            n_resamples, seed, _labels(task))
        out["tasks"][task] = entry
    return out


def _labels(task: str) -> tuple[str, ...]:
    try:
        return tasks.get_task(task).labels
    except ValidationError:  # a task no longer registered here: the study's A-D
        return LABELS


def format_table(result: dict[str, Any]) -> str:
    lines = [f"A = {result['a']}", f"B = {result['b']}",
             f"B - A on shared items; 95% paired-bootstrap CI ({result['resamples']} resamples, seed {result['seed']}); "
             "McNemar exact p for per-item right/wrong metrics"]
    for d in result.get("settings_differ", []):
        lines.append(f"warning: generated with different {d['setting']} (A {d['a']}, B {d['b']}): "
                     "B - A is not the models' difference alone")
    head = f"{'task':20s} {'metric':20s} {'A':>9s} {'B':>9s} {'B-A':>9s} {'95% CI':>21s} {'McNemar p':>10s}"
    for task, e in result["tasks"].items():
        lines += ["", f"{task} ({e['type']}): {e['shared_items']} shared items (A {e['items_a']}, B {e['items_b']})"]
        if e.get("gold_mismatches"):
            lines.append(f"  warning: {e['gold_mismatches']} shared ids have different golds")
        if e.get("prompt_mismatches"):
            lines.append(f"  note: {e['prompt_mismatches']} shared ids were prompted differently")
        lines.append(head)
        for m, r in e.get("metrics", {}).items():
            ci = "n/a" if r["ci95"] is None else f"[{r['ci95'][0]:.4g}, {r['ci95'][1]:.4g}]"
            p = f"{r['mcnemar_p']:.4g}" if "mcnemar_p" in r else ""
            lines.append(f"{task[:20]:20s} {m:20s} {_f(r['a']):>9s} {_f(r['b']):>9s} {_f(r['diff']):>9s} {ci:>21s} {p:>10s}")
    return "\n".join(lines)


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"
