"""Calibration samples and held-out report prompts: seeded rows of a stored dataset, formatted
exactly as the trainer formats them (the shared task template, the chat template with thinking off,
then the ``\\boxed{}`` answer), so calibration sees the text the model will see."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd

from services.common.data import tasks
from services.common.data.importing import load_split
from services.common.storage.store import ObjectStore
from services.quantizer.config import QuantizeConfig


def format_text(tok, task: str, row: dict[str, Any]) -> str:
    """Prompt (chat template, generation prompt, enable_thinking=False) + gold answer + EOS."""
    prompt = tasks.render_prompt(tok, tasks.build_messages(task, row))
    return prompt + tasks.format_target(task, row) + tok.eos_token


def texts_hash(texts: list[str]) -> str:
    """sha256 of the exact samples (the study's ``calibration_hash``): same hash, same calibration."""
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()


def draw(store: ObjectStore, cfg: QuantizeConfig, tok) -> tuple[list[str], list[str], dict[str, Any]]:
    """(calibration texts, held-out report texts, what was drawn). Rows are drawn with the
    calibration seed; report rows never overlap the calibration rows."""
    calib, report, info = [], [], {"dataset": cfg.dataset, "task": cfg.task}
    if not cfg.dataset:
        return calib, report, info
    c, r = cfg.calibration, cfg.report
    used_ids: set[str] = set()
    if c is not None:
        df = load_split(store, cfg.dataset, c["split"])
        rows = df.sample(n=c["num_samples"], random_state=c["seed"])
        used_ids = set(rows["id"])
        calib = [format_text(tok, cfg.task, row) for row in rows.to_dict("records")]
        info["calibration"] = {"split": c["split"], "seed": c["seed"], "size": len(calib),
                               "hash": texts_hash(calib), "ids": sorted(used_ids)}
    if r["num_prompts"]:
        df = load_split(store, cfg.dataset, r["split"])
        if r["exclude_calibration"]:
            df = df[~df["id"].isin(used_ids)]
        seed = c["seed"] if c is not None else 0
        rows = df.sample(n=min(r["num_prompts"], len(df)), random_state=seed + 1) if len(df) else pd.DataFrame()
        report = [format_text(tok, cfg.task, row) for row in rows.to_dict("records")]
        info["report"] = {"split": r["split"], "size": len(report), "hash": texts_hash(report),
                          "disjoint_from_calibration": not (set(rows.get("id", [])) & used_ids)}
    return calib, report, info
