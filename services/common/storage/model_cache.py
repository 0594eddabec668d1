"""A per-service, size-bounded LRU cache of models fetched from storage, keyed by the digest of
the model's manifest (``artifacts.manifest_digest``: it covers every file's sha256, so equal
digests mean equal bytes, whatever store they came from).

A job's fetch becomes: look the digest up; on a miss, download into a private temporary folder
inside the cache — ``artifacts.fetch_dir``, which hashes every file as it arrives and refuses one
that is not the manifest's (IntegrityError), so an entry only ever holds verified bytes and a
model is hashed once per entry, not per job — and ``rename`` it into place (atomic: a crashed or killed download leaves only a
``.tmp-*`` folder, never a half entry); then hard-link the entry's files into the job's folder
(copy where links are impossible). Entries are made read-only, and each use re-checks every
file's size and mtime against what the entry recorded, so a job that wrote into its fetched
files in place cannot poison the next job: the entry is dropped and fetched again.

Concurrent jobs (``FTLAB_MAX_RUNNING_JOBS`` > 1, or replicas sharing a cache folder) serialise
on an ``flock`` of ``<cache>/.lock`` while they look up, insert and evict; downloads of
different models run in parallel. Eviction removes least-recently-used entries (their
``.used`` file's mtime) until the total is within the bound; files a running job linked stay
valid (a hard link outlives the entry's name).

Settings: ``FTLAB_MODEL_CACHE_DIR`` (default ``<FTLAB_CACHE_DIR or ~/.cache/ftlab>/model-cache``,
one subfolder per service), ``FTLAB_MODEL_CACHE_GB`` (bound, default 20; ``0`` turns the cache
off).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from services.common.storage import artifacts

ENTRY_META = ".entry.json"
USED = ".used"


def cache_dir(service: str | None = None) -> Path | None:
    """The cache folder of ``service`` (``FTLAB_SERVICE`` when None), or None when turned off."""
    if limit_bytes() <= 0:
        return None
    root = os.environ.get("FTLAB_MODEL_CACHE_DIR")
    if not root:
        base = os.environ.get("FTLAB_CACHE_DIR") or str(Path.home() / ".cache" / "ftlab")
        root = str(Path(base) / "model-cache")
    return Path(root) / (service or os.environ.get("FTLAB_SERVICE") or "default")


def limit_bytes() -> int:
    """``FTLAB_MODEL_CACHE_GB`` (GiB, float) in bytes; 0 = off."""
    raw = os.environ.get("FTLAB_MODEL_CACHE_GB", "20")
    try:
        gb = float(raw)
    except ValueError as exc:
        raise ValueError(f"FTLAB_MODEL_CACHE_GB={raw!r}: expected a number of GiB (0 turns the cache off)") from exc
    return int(max(gb, 0.0) * 2**30)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _entry_ok(entry: Path) -> bool:
    try:
        meta = json.loads((entry / ENTRY_META).read_text())
        for rel, (size, mtime_ns) in meta["files"].items():
            st = (entry / rel).stat()
            if st.st_size != size or st.st_mtime_ns != mtime_ns:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _size(entry: Path) -> int:
    return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())


def _remove(path: Path) -> None:
    def _writable(func, p, _exc):  # entries are read-only: make them writable to delete them
        os.chmod(os.path.dirname(p), 0o755)
        os.chmod(p, stat.S_IWUSR | stat.S_IRUSR)
        func(p)
    shutil.rmtree(path, onerror=_writable)


def _evict(root: Path, limit: int, keep: str) -> list[str]:
    """Under the lock: drop least-recently-used entries (never ``keep``) until the total fits."""
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    sizes = {p.name: _size(p) for p in entries}
    total = sum(sizes.values())
    evicted = []
    for p in sorted(entries, key=lambda p: (p / USED).stat().st_mtime if (p / USED).exists() else 0):
        if total <= limit:
            break
        if p.name == keep:
            continue
        _remove(p)
        total -= sizes[p.name]
        evicted.append(p.name)
    return evicted


def _link_tree(src: Path, dest: Path) -> None:
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if path.is_dir() or rel.as_posix() in (ENTRY_META, USED):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        try:
            os.link(path, target)
        except OSError:  # another filesystem: a copy, writable like any fetched file
            shutil.copyfile(path, target)


def fetch(manifest: dict[str, Any], download: Callable[[Path], None], dest: str | os.PathLike,
          service: str | None = None) -> str:
    """Put the model whose committed ``manifest`` is given into ``dest``, from the cache or by
    calling ``download(folder)`` (which must fill ``folder`` with the manifest's files).

    Returns ``"hit"``, ``"miss"`` or ``"off"`` (cache turned off: downloaded straight to ``dest``).
    A model larger than the bound is downloaded straight to ``dest`` too (``"miss"``)."""
    dest = Path(dest)
    root = cache_dir(service)
    if root is None:
        download(dest)
        return "off"
    key = artifacts.manifest_digest(manifest)
    entry = root / key
    with _locked(root):
        hit = entry.is_dir() and _entry_ok(entry)
        if hit:
            (entry / USED).touch()
            _link_tree(entry, dest)
            return "hit"
        if entry.exists():
            _remove(entry)  # changed or incomplete: fetch it again
    need = sum(int(f.get("size", 0)) for f in manifest.get("files", []))
    limit = limit_bytes()
    if need > limit:
        download(dest)
        return "miss"
    clear_stale_tmp(root)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        download(tmp)
        files = {}
        for path in tmp.rglob("*"):
            if path.is_file():
                path.chmod(0o444)
                st = path.stat()
                files[path.relative_to(tmp).as_posix()] = [st.st_size, st.st_mtime_ns]
        (tmp / ENTRY_META).write_text(json.dumps({"digest": key, "files": files, "created_at": time.time()}))
        (tmp / USED).touch()
        with _locked(root):
            if entry.is_dir() and _entry_ok(entry):  # a concurrent job put it there first
                _remove(tmp)
            else:
                if entry.exists():
                    _remove(entry)
                os.rename(tmp, entry)
            (entry / USED).touch()
            _evict(root, limit, keep=key)
            _link_tree(entry, dest)
    except BaseException:
        if tmp.exists():
            _remove(tmp)
        raise
    return "miss"


def clear_stale_tmp(root: Path, older_than_s: float = 3600) -> None:
    """Remove ``.tmp-*`` folders left by downloads killed mid-way (older than ``older_than_s``)."""
    for p in root.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if time.time() - p.stat().st_mtime > older_than_s:
                _remove(p)
