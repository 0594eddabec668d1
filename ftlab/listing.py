"""What storage holds, one row per committed artifact: ``ftlab data list``, ``ftlab model list`` and
``ftlab eval list`` (one row per evaluated task). Every listing has the same form: rows of plain
values, sorted, each with the artifact's commit time (``created``, its manifest's ``created_at``,
UTC); :func:`render` prints them as an aligned table, ``--json`` as they are."""
from __future__ import annotations

import json
from typing import Any

from services.common.storage import artifacts
from services.common.storage.store import ObjectStore

Row = dict[str, Any]
# listing -> (row key, column header) in printing order
COLUMNS = {
    "datasets": [("name", "dataset"), ("task", "task"), ("source", "source"), ("rows", "rows"),
                 ("created", "created")],
    "models": [("name", "model"), ("kind", "kind"), ("parent", "parent"), ("quantization", "quantization"),
               ("created", "created")],
    "evaluations": [("model", "model"), ("eval_id", "eval id"), ("task", "task"), ("accuracy", "accuracy %"),
                    ("samples", "samples"), ("created", "created")],
}


def datasets(store: ObjectStore) -> list[Row]:
    """Committed datasets: name, task, source (seed | hf | hub | a recipe's), rows per split, created."""
    rows = []
    for name in artifacts.list_committed(store, "datasets"):
        m = artifacts.read_manifest(store, "datasets", name) or {}
        rows.append({"name": name, "task": m.get("task"), "source": m.get("source"),
                     "rows": {s: v.get("rows") for s, v in m.get("splits", {}).items()},
                     "created": m.get("created_at")})
    return rows


def models(store: ObjectStore) -> list[Row]:
    """Committed models: name, kind (base | trained | quantized), the model it was made from
    (None for a base model), its quantization tag (``NoQuant`` for full precision), created."""
    rows = []
    for name in artifacts.list_committed(store, "models"):
        m = artifacts.read_manifest(store, "models", name) or {}
        parents = m.get("parents") or [None]
        rows.append({"name": name, "kind": m.get("kind"), "parent": parents[0],
                     "quantization": (m.get("quantization") or {}).get("quant_tag"),
                     "created": m.get("created_at")})
    return rows


def evaluations(store: ObjectStore) -> list[Row]:
    """Committed evaluations, one row per task: model, eval id, task, its accuracy (percent of the
    items answered right, the study's headline metric; metrics.json ``datasets.<task>.accuracy``),
    the number of items scored, created. Sorted by model, eval id, task."""
    rows = []
    for prefix in artifacts.list_committed(store, "evaluations"):
        m = artifacts.read_manifest(store, "evaluations", prefix) or {}
        model, _, eval_id = prefix.rpartition("/")
        metrics = artifacts.read_json(store, "evaluations", prefix, "metrics.json", m)
        for task, block in sorted(metrics.get("datasets", {}).items()):
            rows.append({"model": m.get("model", model), "eval_id": m.get("eval_id", eval_id), "task": task,
                         "accuracy": block.get("accuracy"), "samples": block.get("total_samples"),
                         "created": m.get("created_at")})
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def render(rows: list[Row], listing: str, as_json: bool = False) -> str:
    """``rows`` of ``listing`` (a key of :data:`COLUMNS`) as an aligned table with a header, or as
    JSON; a line saying so when storage holds none."""
    if as_json:
        return json.dumps(rows, indent=2)
    if not rows:
        return f"no {listing} in storage"
    cols = COLUMNS[listing]
    table = [[header for _, header in cols]] + [[_cell(r.get(key)) for key, _ in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table)
