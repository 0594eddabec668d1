"""Training checkpoints in object storage, so a job survives its service: the Trainer's
checkpoint folder (adapter or weights, optimizer, scheduler, RNG, trainer_state.json with the
loss history) is committed to the ``jobs`` bucket under
``checkpoints/trainer/<output_name>-<run_key>/step-<N>/`` — manifest last, like every artifact.

Why the ``jobs`` bucket and this key: ``models`` holds committed models only (a checkpoint is not
one), and the job records live under ``jobs/trainer/``, which the runtime reads back as records.
The run key (spec.run_key) names the *settings*, not the job id, so a job re-queued after a crash
and the same spec resubmitted after a cancel both resume; other settings never do. Only the latest
checkpoint is kept; the run's checkpoints are deleted once its model is committed. A resume
verifies every file of the checkpoint against its manifest (``artifacts.fetch_dir``): a damaged
checkpoint fails the job naming the file, it is never trained on."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

from services.common.storage import artifacts
from services.common.storage.store import ObjectStore

BUCKET = "jobs"
_STEP = re.compile(r"/step-(\d+)$")


def committed_steps(store: ObjectStore, prefix: str) -> list[int]:
    steps = []
    for name in artifacts.list_committed(store, BUCKET, prefix + "/"):
        m = _STEP.search(name)
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps)


class Checkpoint(NamedTuple):
    step: int
    path: Path
    info: dict  # what upload() was given: output_name, the training dtype


def fetch_latest(store: ObjectStore, prefix: str, dest: Path) -> Checkpoint | None:
    """Download the latest committed checkpoint into ``dest/checkpoint-<N>`` (the folder name
    transformers' Trainer expects); None when the run has none."""
    steps = committed_steps(store, prefix)
    if not steps:
        return None
    local = Path(dest) / f"checkpoint-{steps[-1]}"
    artifacts.fetch_dir(store, BUCKET, f"{prefix}/step-{steps[-1]}", local)
    manifest = local / artifacts.MANIFEST
    info = json.loads(manifest.read_text())
    manifest.unlink()  # ours, not the Trainer's
    return Checkpoint(steps[-1], local, info)


def upload(store: ObjectStore, prefix: str, step: int, local_dir: Path, info: dict) -> None:
    """Commit one checkpoint, then drop the older ones (the new one is already visible)."""
    artifacts.commit_dir(store, BUCKET, f"{prefix}/step-{step}", local_dir,
                         {"kind": "checkpoint", "step": step, **info}, overwrite=True)
    for old in committed_steps(store, prefix):
        if old != step:
            delete(store, f"{prefix}/step-{old}")


def delete(store: ObjectStore, prefix: str) -> None:
    store.delete(BUCKET, f"{prefix}/{artifacts.MANIFEST}")  # un-commit first, then the files
    store.delete_prefix(BUCKET, prefix + "/")


def clear(store: ObjectStore, prefix: str) -> None:
    """Every checkpoint of a run (after its model is committed)."""
    for step in committed_steps(store, prefix):
        delete(store, f"{prefix}/step-{step}")
    store.delete_prefix(BUCKET, prefix + "/")  # leftovers of an upload a crash cut short
