"""The door of ``ftlab run`` (``--dry-run`` too) and of the experiment flow: every problem of the
request at once, before anything is written — the command line's and the file's (the schema,
flows/experiment_spec.py, and the planner, flows/experiment.py), then what storage says of the
plan as far as it could be built: splits no dataset has nor will have (flows/splits.py), PTQ
group sizes that do not divide the base model's layer widths (the quantizer's own check,
services/quantizer/config.py), and for a run, names storage holds for another configuration
(flows/identity.py; a dry run shows those as rows). Storage is only read here."""
from __future__ import annotations

from flows.experiment import Check, Experiment, load
from flows.identity import conflicts
from flows.splits import split_problems
from services.common.contract.errors import FtlabError
from services.common.storage.store import ObjectStore
from services.quantizer.config import group_size_problems


def checked(experiment: str, seeds: list[int] | None, store: ObjectStore | None, run: bool) -> Experiment:
    """The plan of ``experiment`` (a shipped name or a path) with ``seeds`` (``--seed``), or one
    ValidationError listing every problem; ``store`` None: storage unknown (its checks are skipped)."""
    checks: list[Check] = []
    if store is not None:
        checks += [lambda exp: split_problems(store, exp), lambda exp: width_problems(store, exp)]
        if run:
            checks.append(lambda exp: conflicts(store, exp))
    return load(experiment, seeds, checks)


def width_problems(store: ObjectStore, exp: Experiment) -> list[str]:
    """Each PTQ step's group size against its base model's layer widths, once per base model,
    method and group size (the quantizer would refuse the step hours later, after training)."""
    out: dict[str, None] = {}
    for s in exp.stage("quantize"):
        base = s.labels.get("base_model") or s.spec["source_model"]
        try:
            found = group_size_problems(store, base, s.spec)
        except FtlabError:  # storage unreadable: the quantizer's door checks it when the step runs
            continue
        out |= dict.fromkeys(f"quantize {s.spec['method']} of {base} models: {x}" for x in found)
    return list(out)
