"""The per-service model cache (services/common/storage/model_cache.py) on a real local store: hits,
LRU eviction under the size bound, a download killed part way, a fetched file written in place,
and concurrent jobs fetching the same model."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from services.common.storage import artifacts
from services.common.storage import model_cache
from services.common.torch_utils import modeling


def _commit(store, name: str, payload: bytes) -> dict:
    src = Path(store.root).parent / f"src-{name}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "model.safetensors").write_bytes(payload)
    (src / "config.json").write_text('{"model_type": "qwen3"}')
    return artifacts.commit_dir(store, "models", name, src, {"kind": "base"})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FTLAB_SERVICE", "trainer")
    monkeypatch.setenv("FTLAB_MODEL_CACHE_GB", str(2.5 * 2**20 / 2**30))  # 2.5 MiB
    return tmp_path / "cache" / "trainer"


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_second_fetch_is_a_hit_with_the_same_bytes(store, cache, tmp_path):
    m = _commit(store, "a", os.urandom(1 << 20))
    d1, _ = modeling.fetch_model(store, "a", tmp_path / "job1")
    store.delete("models", "a/model.safetensors")  # a hit must not need storage's copy any more
    d2, m2 = modeling.fetch_model(store, "a", tmp_path / "job2")
    assert m2 == m and _entries(cache) == [artifacts.manifest_digest(m)]
    for f in m["files"]:
        assert artifacts.sha256_file(d2 / f["path"]) == f["sha256"] == artifacts.sha256_file(d1 / f["path"])
    assert (d2 / "manifest.json").exists()


def test_lru_eviction_keeps_the_bound(store, cache, tmp_path):
    digests = {n: artifacts.manifest_digest(_commit(store, n, os.urandom(1 << 20))) for n in "abc"}
    modeling.fetch_model(store, "a", tmp_path / "1")
    modeling.fetch_model(store, "b", tmp_path / "2")
    modeling.fetch_model(store, "a", tmp_path / "3")  # a is now the most recently used
    os.utime(cache / digests["b"] / model_cache.USED, (1, 1))  # b: long unused
    modeling.fetch_model(store, "c", tmp_path / "4")  # 3 MiB > 2.5 MiB: the LRU entry goes
    assert _entries(cache) == sorted([digests["a"], digests["c"]])
    assert (tmp_path / "2" / "models" / "b" / "model.safetensors").stat().st_size == 1 << 20  # links outlive it


def test_a_download_killed_part_way_leaves_no_entry(store, cache, tmp_path):
    m = _commit(store, "a", os.urandom(1000))

    def dies(folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        model_cache.fetch(m, dies, tmp_path / "job")
    assert _entries(cache) == [] and not list(cache.glob(".tmp-*"))
    d, _ = modeling.fetch_model(store, "a", tmp_path / "job2")
    want = {f["path"]: f["sha256"] for f in m["files"]}
    assert artifacts.sha256_file(d / "model.safetensors") == want["model.safetensors"]


def test_a_fetched_file_changed_in_place_is_not_served_again(store, cache, tmp_path):
    m = _commit(store, "a", b"x" * 1000)
    d, _ = modeling.fetch_model(store, "a", tmp_path / "job1")
    target = d / "config.json"
    target.chmod(0o644)  # the cache made it read-only; a careless recipe (or root) writes anyway
    target.write_text('{"model_type": "changed!"}')
    d2, _ = modeling.fetch_model(store, "a", tmp_path / "job2")
    assert (d2 / "config.json").read_text() == '{"model_type": "qwen3"}'
    assert _entries(cache) == [artifacts.manifest_digest(m)]


def test_concurrent_jobs_fetch_one_model_once(store, cache, tmp_path):
    m = _commit(store, "a", os.urandom(1 << 20))
    calls, errors = [], []

    def job(i):
        try:
            manifest = artifacts.require_manifest(store, "models", "a")
            model_cache.fetch(manifest, lambda f: (calls.append(i), artifacts.fetch_dir(store, "models", "a", f)),
                              tmp_path / f"job{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=job, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and _entries(cache) == [artifacts.manifest_digest(m)]
    for i in range(4):
        assert (tmp_path / f"job{i}" / "model.safetensors").stat().st_size == 1 << 20
    assert not list(cache.glob(".tmp-*"))


def test_turned_off_fetches_straight_into_the_job(store, monkeypatch, tmp_path):
    monkeypatch.setenv("FTLAB_MODEL_CACHE_GB", "0")
    m = _commit(store, "a", b"y" * 10)
    assert model_cache.fetch(m, lambda f: artifacts.fetch_dir(store, "models", "a", f), tmp_path / "j") == "off"
    assert (tmp_path / "j" / "config.json").exists()
