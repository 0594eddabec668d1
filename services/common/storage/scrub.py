"""The scrub: re-hash what storage holds against the manifests, so a team can ask "is everything
in storage still what was committed?" — ``ftlab verify`` and the ``ftlab-verify`` Prefect flow
(flows/verify.py) both run :func:`scrub`.

Each committed artifact ends in one status: ``intact``; ``corrupt`` (a file's size or sha256 is
not the manifest's, or the manifest is unreadable); ``missing`` (a listed file is gone); or
``lineage`` (its files are intact, but a parent's manifest no longer has the digest this
artifact recorded: the parent was edited — e.g. its manifest rewritten to match a changed file —
or re-committed after this artifact was made from it). Every problem is reported, not the first.

Resumable: each artifact's result is appended (and flushed) to a state file as it is verified;
a scrub started again with the same state file reuses the results of artifacts whose manifest
digest is unchanged and hashes only the rest. A scrub that finishes deletes its state file, so
the next (scheduled) scrub hashes everything again."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from services.common.storage import artifacts
from services.common.contract.errors import NotFoundError, ValidationError
from services.common.storage.store import BUCKETS, ObjectStore, make_uri, parse_uri

STATUSES = ("intact", "corrupt", "missing", "lineage")  # best to worst is not implied; see Result.status


@dataclass
class Result:
    uri: str
    digest: str                     # the manifest's digest when verified ("" when unreadable)
    status: str                     # one of STATUSES
    problems: list[str] = field(default_factory=list)
    bytes: int = 0                  # what the manifest lists
    files: int = 0


def _artifact(target: str) -> tuple[str, str]:
    """``bucket[/prefix]`` or ``s3://bucket[/prefix]`` → (bucket, prefix without slashes)."""
    bucket, prefix = parse_uri(target) if target.startswith("s3://") else target.partition("/")[::2]
    return bucket, prefix.strip("/")


def select(store: ObjectStore, targets: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(bucket, prefix) of every committed artifact the targets name: none = every bucket; a bucket
    name = its artifacts; ``bucket/prefix`` (or ``s3://bucket/prefix/``) = the artifact there and
    any committed under it. Raises ValidationError naming every target that matches nothing."""
    targets = list(targets) or list(BUCKETS)
    chosen, problems = [], []
    for t in targets:
        try:
            bucket, prefix = _artifact(t)
        except ValidationError as exc:
            problems.append(str(exc))
            continue
        if bucket not in BUCKETS:
            problems.append(f"{t!r}: {bucket!r} is not a bucket (known: {', '.join(BUCKETS)})")
            continue
        # the artifact at the prefix itself is listed too (its manifest.json is under prefix/)
        found = [(bucket, p) for p in artifacts.list_committed(store, bucket, prefix + "/" if prefix else "")]
        if not found and prefix:
            problems.append(f"{t!r}: no committed artifact at or under {make_uri(bucket, prefix + '/')}")
        chosen += [f for f in found if f not in chosen]
    if problems:
        raise ValidationError(problems)
    return chosen


def _malformed(manifest: Any) -> str | None:
    """Why a manifest's file list cannot be checked (hand-edited, cut), or None."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list):
        return "the manifest has no list of files"
    for i, f in enumerate(files):
        if not (isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)
                and isinstance(f.get("size"), int) and not isinstance(f.get("size"), bool)):
            return f"the manifest's files[{i}] is not {{path, size, sha256}}: {str(f)[:200]}"
    return None


def verify_artifact(store: ObjectStore, bucket: str, prefix: str,
                    on_file: Callable[[int], None] | None = None) -> Result:
    """Hash every file an artifact's manifest lists and check its lineage. ``on_file(bytes)``
    after each file (progress). Whatever is wrong with the artifact, its manifest included, is
    its result, never an exception: a scrub reports every artifact."""
    uri = make_uri(bucket, prefix + "/")
    try:
        manifest = artifacts.require_manifest(store, bucket, prefix)
    except artifacts.IntegrityError as exc:
        return Result(uri, "", "corrupt", exc.problems)
    except NotFoundError as exc:  # deleted since it was listed
        return Result(uri, "", "missing", [str(exc)])
    if (why := _malformed(manifest)) is not None:
        return Result(uri, "", "corrupt", [f"{uri}: {why}"])
    files = manifest["files"]
    res = Result(uri, artifacts.manifest_digest(manifest), "intact",
                 bytes=sum(f["size"] for f in files), files=len(files))
    corrupt = missing = False
    for f in files:
        try:
            size, digest = store.hash_object(bucket, f"{prefix}/{f['path']}")
        except NotFoundError:
            size = digest = None
        except ValidationError as exc:  # a path no key may have ('..'): the manifest was edited
            res.problems.append(f"{uri}: the manifest lists {f['path']!r}, not a file of this artifact ({exc})")
            corrupt = True
            continue
        if (problem := artifacts.mismatch(uri, f["path"], f, size, digest)) is not None:
            res.problems.append(problem)
            corrupt, missing = corrupt or size is not None, missing or size is None
        if on_file is not None:
            on_file(f["size"])
    lineage = artifacts.lineage_problems(store, manifest)
    res.problems += lineage
    res.status = "corrupt" if corrupt else "missing" if missing else "lineage" if lineage else "intact"
    return res


def default_state_path(store: ObjectStore, targets: Iterable[str]) -> Path:
    """Where an interrupted scrub of these targets on this store keeps its results:
    ``<FTLAB_CACHE_DIR or ~/.cache/ftlab>/verify/<hash of store and targets>.jsonl``."""
    base = Path(os.environ.get("FTLAB_CACHE_DIR") or Path.home() / ".cache" / "ftlab")
    key = hashlib.sha256(json.dumps([store.describe(), sorted(targets)]).encode()).hexdigest()[:16]
    return base / "verify" / f"{key}.jsonl"


def _load_state(path: Path) -> dict[str, Result]:
    done: dict[str, Result] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = Result(**json.loads(line))
            except (ValueError, TypeError):
                continue  # a line cut by a kill mid-write: that artifact is verified again
            done[r.uri] = r
    return done


def scrub(store: ObjectStore, targets: Iterable[str] = (), state: Path | None = None,
          progress: Callable[[int, int], None] | None = None,
          on_result: Callable[[Result, bool], None] | None = None) -> list[Result]:
    """Verify every artifact the targets name (:func:`select`), one result each, in order.
    ``state``: the resume file (None: not resumable). ``progress(done_bytes, total_bytes)`` as
    files are hashed; ``on_result(result, resumed)`` per artifact."""
    chosen = select(store, targets)
    manifests = {}
    for bucket, prefix in chosen:
        try:
            manifests[(bucket, prefix)] = artifacts.read_manifest(store, bucket, prefix)
        except artifacts.IntegrityError:
            manifests[(bucket, prefix)] = None
    total = sum(f["size"] for m in manifests.values() if m and _malformed(m) is None for f in m["files"])
    previous = _load_state(state) if state else {}
    done_bytes, results = 0, []
    out = None
    if state:
        state.parent.mkdir(parents=True, exist_ok=True)
        out = open(state, "a")
    try:
        for bucket, prefix in chosen:
            m = manifests[(bucket, prefix)]
            old = previous.get(make_uri(bucket, prefix + "/"))
            if m is not None and old is not None and old.digest == artifacts.manifest_digest(m):
                res, resumed = old, True
                done_bytes += res.bytes
                if progress:
                    progress(done_bytes, total)
            else:
                def step(n: int) -> None:
                    nonlocal done_bytes
                    done_bytes += n
                    if progress:
                        progress(done_bytes, total)
                res, resumed = verify_artifact(store, bucket, prefix, step), False
                if out is not None:
                    out.write(json.dumps(asdict(res)) + "\n")
                    out.flush()
            results.append(res)
            if on_result:
                on_result(res, resumed)
    except Exception:
        if state:  # a crash is no interruption: the next scrub must not resume from it
            state.unlink(missing_ok=True)
        raise
    finally:
        if out is not None:
            out.close()
    if state:
        state.unlink(missing_ok=True)  # finished: the next scrub starts from scratch
    return results


def summary(results: list[Result]) -> dict[str, int]:
    """How many artifacts ended in each status, plus ``artifacts``, ``files`` and ``bytes`` verified."""
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    return {"artifacts": len(results), **counts, "files": sum(r.files for r in results),
            "bytes": sum(r.bytes for r in results)}
