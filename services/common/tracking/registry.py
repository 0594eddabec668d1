"""The MLflow model registry as a view of the ``models`` bucket: each committed model (base,
fine-tune, quantized) is a registered model under its study-style name, each committed version
of it (a manifest digest) a model version whose source is its storage URI (no copy of the
weights), linked to the run that made it and tagged with its lineage (parent model, kind,
quantization). ``ftlab model register`` syncs it; re-running registers only what changed."""
from __future__ import annotations

from typing import Any

from services.common.storage import artifacts
from services.common.tracking.tracker import client, model_run


def register_models(store, uri: str, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Register every committed model (or only ``names``) in the registry at ``uri``. Returns one
    row per model: name, version, status (``registered`` | ``up to date``), source, parent."""
    from mlflow.exceptions import MlflowException
    c = client(uri)
    committed = artifacts.list_committed(store, "models")
    missing = sorted(set(names or []) - set(committed))
    if missing:
        from services.common.contract.errors import NotFoundError
        raise NotFoundError(f"not committed in the models bucket: {', '.join(missing)}")
    rows = []
    for name in names or committed:
        m = artifacts.read_manifest(store, "models", name) or {}
        digest = artifacts.manifest_digest(m)
        parent = (m.get("parents") or [""])[0] or ""
        kind = m.get("kind") or "base"
        quant = (m.get("quantization") or {}).get("quant_tag") or "NoQuant"
        try:
            c.get_registered_model(name)
        except MlflowException:
            c.create_registered_model(name, tags={"ftlab.kind": kind},
                                      description=f"ftlab model `{name}` ({kind})" + (f", made from `{parent}`" if parent else ""))
        versions = c.search_model_versions(f"name = '{name}'")
        same = [v for v in versions if v.tags.get("ftlab.manifest_digest") == digest]
        source = f"s3://models/{name}/"
        if same:
            rows.append({"name": name, "version": str(same[0].version), "status": "up to date", "source": source,
                         "parent": parent})
            continue
        run = model_run(c, name)
        v = c.create_model_version(
            name, source, run_id=run.info.run_id if run else None,
            tags={"ftlab.manifest_digest": digest, "ftlab.kind": kind, "ftlab.parent_model": parent,
                  "ftlab.quant_tag": quant, "ftlab.base_model": m.get("base_model") or "",
                  "ftlab.created_at": str(m.get("created_at") or "")},
            description=f"storage: {source}" + (f"; made from `{parent}`" if parent else ""))
        rows.append({"name": name, "version": str(v.version), "status": "registered", "source": source, "parent": parent})
    return rows
