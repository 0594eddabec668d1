"""Is a planned step done? Only when storage holds its output made by the same configuration.

A training step is done when the stored model's ``config_digest`` (services/common/contract/identity.py;
for a model committed before digests were recorded, the digest of its manifest's ``spec``) equals the
step's. A quantization or evaluation (whose config the service resolves against storage) is done
when the parents' digests it recorded equal those of the parents stored now — each of which is
checked against the plan in its own step — and its own settings are in its name (the PTQ tag, the
eval id's spec hash). Anything else under
the step's name is a conflict: ``ftlab run`` refuses the whole plan before it starts, naming the
differing fields; ``--dry-run`` shows it.
"""
from __future__ import annotations

from typing import Any

from flows.experiment import Experiment, Step
from services.common.contract.errors import ValidationError
from services.common.contract.identity import config_digest, describe, differences, digest_of, identity_config
from services.common.storage import artifacts
from services.common.storage.store import ObjectStore


def stored_differences(store: ObjectStore, step: Step, manifest: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """How the stored artifact under ``step.output`` differs from the planned step: [] when it is
    the same configuration; (field, planned, stored) otherwise."""
    kind = {"train": "trained", "quantize": "quantized", "evaluate": "evaluation"}[step.stage]
    if manifest.get("kind") != kind:  # e.g. an imported model under a trained model's name
        return [("kind", kind, manifest.get("kind"))]
    if step.stage == "train":
        stored = identity_config("train", manifest.get("spec") or {})
        digest = manifest.get("config_digest") or config_digest("train", stored, manifest.get("parents") or [])
        if digest == step.digest:
            return []
        return differences(step.identity, stored) or [("parents", step.parents, manifest.get("parent_digests"))]
    recorded = manifest.get("parent_digests")
    # the model it was made from, as the services record it (not step.after, which also names the
    # lr_sweep choice an evaluation waits for: every chosen model's evaluation was a false conflict)
    source = step.spec["model"] if step.stage == "evaluate" else step.spec["source_model"]
    now = [digest_of(artifacts.read_manifest(store, "models", source), source)]
    if recorded is not None and recorded != now:  # the model it was made from has been re-made since
        return [("parent digest", now, recorded)]
    return []


def step_status(store: ObjectStore, step: Step) -> tuple[str, str]:
    """("done" | "todo" | "conflict", what differs)."""
    manifest = artifacts.read_manifest(store, step.bucket, step.output)
    if manifest is None:
        return "todo", ""
    diffs = stored_differences(store, step, manifest)
    return ("conflict", describe(diffs)) if diffs else ("done", "")


def conflicts(store: ObjectStore, exp: Experiment) -> list[str]:
    """Every planned step whose name storage holds for another configuration, with the fields."""
    out = []
    for s in exp.steps:
        status, why = step_status(store, s)
        if status == "conflict":
            out.append(f"{s.bucket}/{s.output} exists but was made by another configuration: {why}; "
                       "give this plan's step its own name (output_name: '{name}-...'), or set the fields back "
                       "to the stored configuration's (ftlab has no delete command: removing the stored "
                       "model is your storage's, e.g. the folder under FTLAB_LOCAL_ROOT or the S3 prefix)")
    return out


def refuse_conflicts(store: ObjectStore, exp: Experiment) -> None:
    """Raise ValidationError listing every conflict at once (nothing is submitted)."""
    if problems := conflicts(store, exp):
        raise ValidationError([f"{exp.source}: {x}" for x in problems])
