"""A model's (or evaluation's) identity is its configuration, not its name.

``config_digest`` hashes the resolved configuration that made an artifact (names and bookkeeping left
out) together with its parents' digests, so two artifacts with one name but different settings (a
seed, a learning rate, a hand-trained model) never count as the same thing. Services record it in the
manifest (``config_digest``, ``parent_digests``) when they commit; the planner computes the same digest
for each planned step (flows/experiment.py) and "done" means the stored digest equals it
(flows/identity.py). An imported model has no configuration: its identity is its name.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

# What never changes what is made: names (the identity must not depend on them), where and how a job
# runs (device, checkpoint cadence, resume policy) and what the door computes from storage.
NOT_IDENTITY = {
    "train": ("output_name", "task", "resume", "save_steps", "logging_steps", "device_type", "checkpoint_prefix",
              "memory_estimate", "memory_estimate_gb"),
    "quantize": ("output_name", "source_model"),
    "evaluate": ("model", "eval_id"),
}
DIGEST_CHARS = 16


def identity_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` less the fields that are not part of ``kind``'s identity."""
    drop = NOT_IDENTITY.get(kind, ())
    return {k: v for k, v in config.items() if k not in drop}


def config_digest(kind: str, config: dict[str, Any], parents: list[str]) -> str:
    """16 hex digits of a sha256 over ``kind``, the identity part of ``config`` and the parents'
    digests (in order; an imported model's digest is its name)."""
    body = {"kind": kind, "config": identity_config(kind, config), "parents": list(parents)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:DIGEST_CHARS]


def digest_of(manifest: dict[str, Any] | None, name: str) -> str:
    """A stored model's identity: the digest its manifest records, else (an imported model, or one
    committed before digests were recorded) its name."""
    return (manifest or {}).get("config_digest") or name


def differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """The fields on which two configurations differ, dotted for nested blocks (``lora.r``), as
    (field, a's value, b's value), sorted by field."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append((f"{prefix}{k}", va, vb))
    return out


def describe(diffs: list[tuple[str, Any, Any]], a: str = "planned", b: str = "stored") -> str:
    """``seed (planned 1, stored 42), learning_rate (planned 0.001, stored 0.0002)``."""
    return ", ".join(f"{f} ({a} {va!r}, {b} {vb!r})" for f, va, vb in diffs)
