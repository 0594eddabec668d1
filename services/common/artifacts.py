"""Artifacts: a folder of objects under ``bucket/prefix/`` that exists for readers only once its
``manifest.json`` is written, and that is written last. A crash mid-upload leaves no visible artifact."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from services.common.errors import NotFoundError, PreconditionError, StorageError
from services.common.storage import ObjectStore, make_uri

MANIFEST = "manifest.json"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _prefix(prefix: str) -> str:
    return prefix.strip("/") + "/"


def commit_dir(store: ObjectStore, bucket: str, prefix: str, local_dir: str | os.PathLike,
               manifest: dict[str, Any], overwrite: bool = False,
               on_file: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Upload every file of ``local_dir`` under ``prefix/``, then write the manifest.

    The manifest lists each file with size and sha256, plus the caller's fields (lineage, spec...).
    Refuses to replace a committed artifact unless ``overwrite``: artifacts are immutable by default.
    ``on_file(done, total)`` is called after each uploaded file (upload progress). A failure part
    way (e.g. storage down past its retry deadline) leaves no manifest, so no visible artifact.
    """
    p = _prefix(prefix)
    if read_manifest(store, bucket, prefix) is not None:
        if not overwrite:
            raise PreconditionError(f"{make_uri(bucket, p)} already exists")
        store.delete(bucket, p + MANIFEST)  # un-commit first so nobody reads a mix
    root = Path(local_dir)
    files = []
    paths = [x for x in sorted(root.rglob("*")) if x.is_file() and x.relative_to(root).as_posix() != MANIFEST]
    for path in paths:
        rel = path.relative_to(root).as_posix()
        store.put_file(bucket, p + rel, path)
        files.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)})
        if on_file is not None:
            on_file(len(files), len(paths))
    body = {"uri": make_uri(bucket, p), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **manifest, "files": files}
    store.put_bytes(bucket, p + MANIFEST, json.dumps(body, indent=2, sort_keys=True).encode())
    return body


def read_manifest(store: ObjectStore, bucket: str, prefix: str) -> dict[str, Any] | None:
    """The artifact's manifest, or None if the artifact is not (yet) committed."""
    try:
        return json.loads(store.get_bytes(bucket, _prefix(prefix) + MANIFEST))
    except NotFoundError:
        return None


def require_manifest(store: ObjectStore, bucket: str, prefix: str, what: str = "artifact") -> dict[str, Any]:
    m = read_manifest(store, bucket, prefix)
    if m is None:
        raise NotFoundError(f"{what} {make_uri(bucket, _prefix(prefix))} not found (no manifest.json)")
    return m


def list_committed(store: ObjectStore, bucket: str, prefix: str = "") -> list[str]:
    """Prefixes (without trailing '/') that hold a manifest.json: the artifacts readers may see."""
    return sorted(k[: -len(MANIFEST) - 1] for k in store.list_keys(bucket, prefix)
                  if k.endswith("/" + MANIFEST))


def fetch_dir(store: ObjectStore, bucket: str, prefix: str, dest: str | os.PathLike) -> dict[str, Any]:
    """Download a committed artifact's files (those its manifest lists) into ``dest``."""
    manifest = require_manifest(store, bucket, prefix)
    p = _prefix(prefix)
    dest = Path(dest)
    for f in manifest["files"]:
        target = dest / f["path"]
        store.get_file(bucket, p + f["path"], target)
        if target.stat().st_size != f["size"]:
            raise StorageError(f"{make_uri(bucket, p + f['path'])}: size {target.stat().st_size} != manifest {f['size']}")
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def put_json(store: ObjectStore, bucket: str, key: str, obj: Any) -> None:
    store.put_bytes(bucket, key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def get_json(store: ObjectStore, bucket: str, key: str) -> Any:
    return json.loads(store.get_bytes(bucket, key))


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of a manifest's canonical JSON: what lineage records about a parent artifact."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
