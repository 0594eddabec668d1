"""Artifacts: a folder of objects under ``bucket/prefix/`` that exists for readers only once its
``manifest.json`` is written, and that is written last. A crash mid-upload leaves no visible artifact.

Every file's sha256 is in the manifest, and every read checks it (:func:`fetch_dir`,
:func:`read_file`): bytes that are not the committed ones — bit rot, a partial overwrite, a hand
edit, another artifact's file — raise :class:`IntegrityError` naming the artifact, the file and
both digests, so no result is computed from them. Children record their parents' manifest digest
(``*_manifest_sha``, :data:`LINEAGE`): a parent whose manifest was edited after them shows in
:func:`lineage_problems`."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from services.common.contract.errors import NotFoundError, PreconditionError, StorageError
from services.common.storage.store import ObjectStore, make_uri

MANIFEST = "manifest.json"


class IntegrityError(StorageError):
    """An artifact's stored bytes are not those its manifest committed (or a listed file is gone)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def mismatch(uri: str, path: str, expected: dict[str, Any], size: int | None, sha256: str | None) -> str | None:
    """The problem text when a file of artifact ``uri`` is not what the manifest entry
    ``expected`` says (``size`` None: the file is missing); None when it is."""
    if size is None:
        return f"{uri}: {path} is missing (manifest: sha256 {expected['sha256']}, {expected['size']} bytes)"
    if sha256 != expected["sha256"] or size != expected["size"]:
        return (f"{uri}: {path} does not match its manifest: expected sha256 {expected['sha256']} "
                f"({expected['size']} bytes), found sha256 {sha256} ({size} bytes)")
    return None


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
        digest = store.put_file(bucket, p + rel, path)  # hashed while uploading, sent with it on S3
        files.append({"path": rel, "size": path.stat().st_size, "sha256": digest})
        if on_file is not None:
            on_file(len(files), len(paths))
    body = {"uri": make_uri(bucket, p), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **manifest, "files": files}
    store.put_bytes(bucket, p + MANIFEST, json.dumps(body, indent=2, sort_keys=True).encode())
    return body


def read_manifest(store: ObjectStore, bucket: str, prefix: str) -> dict[str, Any] | None:
    """The artifact's manifest, or None if the artifact is not (yet) committed. IntegrityError
    when it is not a manifest (unparsable JSON, not an object): the artifact's files cannot be checked."""
    try:
        data = store.get_bytes(bucket, _prefix(prefix) + MANIFEST)
    except NotFoundError:
        return None
    try:
        manifest = json.loads(data)
        if isinstance(manifest, dict) and isinstance(manifest.get("files", []), list):
            return manifest
        why = "is not a JSON object with a list of files"
    except ValueError as exc:
        why = f"is not valid JSON ({exc})"
    raise IntegrityError([f"{make_uri(bucket, _prefix(prefix) + MANIFEST)} {why}"])


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
    """Download a committed artifact's files (those its manifest lists) into ``dest``, each hashed
    while it downloads and checked against the manifest. Raises :class:`IntegrityError` listing
    every file that differs or is missing (those files are not left in ``dest``)."""
    manifest = require_manifest(store, bucket, prefix)
    p = _prefix(prefix)
    uri = make_uri(bucket, p)
    dest = Path(dest)
    problems = []
    for f in manifest.get("files", []):
        target = dest / f["path"]
        try:
            digest = store.get_file(bucket, p + f["path"], target)
            size = target.stat().st_size
        except NotFoundError:
            digest = size = None
        if (problem := mismatch(uri, f["path"], f, size, digest)) is not None:
            problems.append(problem)
            target.unlink(missing_ok=True)
    if problems:
        raise IntegrityError(problems)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_file(store: ObjectStore, bucket: str, prefix: str, path: str,
              manifest: dict[str, Any] | None = None) -> bytes:
    """One file of a committed artifact, checked against its manifest's sha256. NotFoundError
    when the artifact is not committed or its manifest lists no such file (the artifact has
    none); IntegrityError when a listed file differs or is gone. ``manifest``: the artifact's,
    when the caller has read it already."""
    if manifest is None:
        manifest = require_manifest(store, bucket, prefix)
    uri = make_uri(bucket, _prefix(prefix))
    entry = next((f for f in manifest.get("files", []) if f["path"] == path), None)
    if entry is None:
        raise NotFoundError(f"{uri}{path} does not exist (its manifest lists no such file)")
    try:
        data = store.get_bytes(bucket, _prefix(prefix) + path)
    except NotFoundError:
        raise IntegrityError([mismatch(uri, path, entry, None, None)]) from None
    if (problem := mismatch(uri, path, entry, len(data), hashlib.sha256(data).hexdigest())) is not None:
        raise IntegrityError([problem])
    return data


def read_json(store: ObjectStore, bucket: str, prefix: str, path: str,
              manifest: dict[str, Any] | None = None) -> Any:
    """:func:`read_file` of a JSON file, parsed."""
    return json.loads(read_file(store, bucket, prefix, path, manifest))


def put_json(store: ObjectStore, bucket: str, key: str, obj: Any) -> None:
    store.put_bytes(bucket, key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of a manifest's canonical JSON: what lineage records about a parent artifact."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


# What a child's manifest records about its parents: (field naming the parent, field with the
# parent's manifest digest when the child was made, the parent's bucket). Trainer, quantizer
# (source; base of a merged adapter) and evaluator write these.
LINEAGE = (("base_model", "base_manifest_sha", "models"), ("source_model", "source_manifest_sha", "models"),
           ("dataset", "dataset_manifest_sha", "datasets"), ("model", "model_manifest_sha", "models"))


def lineage_problems(store: ObjectStore, manifest: dict[str, Any]) -> list[str]:
    """Where a parent's manifest no longer has the digest this child recorded: the parent was
    edited (e.g. its manifest rewritten to match a changed file) or re-committed after the child
    was made, so the child was not made from what storage now holds; or the parent is gone."""
    problems = []
    for name_field, sha_field, bucket in LINEAGE:
        name, recorded = manifest.get(name_field), manifest.get(sha_field)
        if not name or not recorded:
            continue
        where = f"{manifest.get('uri', '?')}: its {name_field} {make_uri(bucket, _prefix(name))}"
        try:
            parent = read_manifest(store, bucket, name)
        except IntegrityError as exc:
            problems.append(f"{where} has a manifest that cannot be read ({'; '.join(exc.problems)})")
            continue
        if parent is None:
            problems.append(f"{where} is no longer committed (lineage recorded manifest sha256 {recorded})")
        elif (now := manifest_digest(parent)) != recorded:
            problems.append(f"{where} has manifest sha256 {now}, but this artifact was made from {recorded}: "
                            "the parent's manifest was edited or re-committed since")
    return problems
