"""The ObjectStore contract, checked on both backends: LocalStore and S3Store against moto's S3 server."""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from services.common.storage import artifacts
from services.common.contract.errors import NotFoundError, PreconditionError, StorageError, ValidationError
from services.common.storage.s3 import S3Store
from services.common.storage.factory import open_store, store_from_env
from services.common.storage.store import BUCKETS, LocalStore
from tests.s3_server import TEST_ACCESS_KEY, TEST_SECRET_KEY, free_port

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        s = LocalStore(tmp_path / "store")
        s.ensure_buckets()
        return s
    return request.getfixturevalue("s3_store")


def _all_keys(store) -> dict[str, list[str]]:
    return {b: store.list_keys(b) for b in BUCKETS}


def _files_under(path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}


def _sha256(path) -> str:
    return artifacts.sha256_file(path)


# --- objects -------------------------------------------------------------------------------------

def test_bytes_round_trip(store):
    store.put_bytes("datasets", "a/b.txt", b"hello")
    assert store.get_bytes("datasets", "a/b.txt") == b"hello"
    store.put_bytes("datasets", "a/b.txt", b"")  # overwrite, and empty objects are objects
    assert store.get_bytes("datasets", "a/b.txt") == b""


def test_file_round_trip(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    store.put_file("models", "m/weights.bin", src)
    dest = tmp_path / "out" / "deep" / "weights.bin"  # parent folders are created
    store.get_file("models", "m/weights.bin", dest)
    assert dest.read_bytes() == src.read_bytes()


def test_large_file_goes_multipart(s3_store, moto_server, tmp_path):
    """40 MiB with 5 MiB parts: 8 parts, which the multipart ETag ('<md5>-8') proves."""
    store = S3Store(moto_server.endpoint, TEST_ACCESS_KEY, TEST_SECRET_KEY, region="us-east-1", part_size=5 * MiB)
    src = tmp_path / "big.bin"
    with open(src, "wb") as fh:
        for _ in range(40):
            fh.write(os.urandom(MiB))
    store.put_file("models", "big/model.safetensors", src)
    assert store.client.stat_object("models", "big/model.safetensors").etag.endswith("-8")
    dest = tmp_path / "big.out"
    store.get_file("models", "big/model.safetensors", dest)
    assert _sha256(dest) == _sha256(src)


def test_missing_object_is_not_found(store, tmp_path):
    with pytest.raises(NotFoundError, match="s3://datasets/nope"):
        store.get_bytes("datasets", "nope")
    with pytest.raises(NotFoundError):
        store.get_file("datasets", "nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(NotFoundError):
        store.get_bytes("no-such-bucket", "nope")


def test_exists(store):
    assert not store.exists("jobs", "j1/state.json")
    store.put_bytes("jobs", "j1/state.json", b"{}")
    assert store.exists("jobs", "j1/state.json")
    assert not store.exists("jobs", "j1")  # a "folder" is not an object
    assert not store.exists("no-such-bucket", "x")


def test_list_keys_recursive_sorted_and_prefixed(store):
    for key in ["b/2", "a/1", "a/x/y/3", "ab", "c"]:
        store.put_bytes("reports", key, b".")
    assert store.list_keys("reports") == ["a/1", "a/x/y/3", "ab", "b/2", "c"]
    assert store.list_keys("reports", "a/") == ["a/1", "a/x/y/3"]
    assert store.list_keys("reports", "a") == ["a/1", "a/x/y/3", "ab"]  # a plain string prefix
    assert store.list_keys("reports", "zzz") == []
    assert store.list_keys("evaluations") == []
    assert store.list_keys("no-such-bucket") == []


def test_delete_and_delete_prefix(store):
    for key in ["run/1/a", "run/1/b/c", "run/10", "run/2/a"]:
        store.put_bytes("evaluations", key, b".")
    store.delete("evaluations", "run/10")
    store.delete("evaluations", "run/10")  # deleting a missing object is not an error
    store.delete("no-such-bucket", "x")
    assert store.list_keys("evaluations") == ["run/1/a", "run/1/b/c", "run/2/a"]
    store.delete_prefix("evaluations", "run/1/")
    assert store.list_keys("evaluations") == ["run/2/a"]
    store.delete_prefix("evaluations", "nothing/")


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../../b", "a\x00b", "a/./b", ""])
def test_bad_keys_are_rejected_and_write_nothing(store, tmp_path, key):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    before, files_before = _all_keys(store), _files_under(tmp_path)
    for call in (lambda: store.put_bytes("datasets", key, b"x"),
                 lambda: store.put_file("datasets", key, src),
                 lambda: store.get_bytes("datasets", key),
                 lambda: store.get_file("datasets", key, tmp_path / "out"),
                 lambda: store.exists("datasets", key),
                 lambda: store.delete("datasets", key)):
        with pytest.raises(ValidationError):
            call()
    assert _all_keys(store) == before
    assert _files_under(tmp_path) == files_before  # nothing escaped the store's root either


def test_config_reopens_an_equal_store(store):
    store.put_bytes("datasets", "k", b"v")
    again = open_store(store.config())
    assert type(again) is type(store) and again.describe() == store.describe()
    assert again.get_bytes("datasets", "k") == b"v"


# --- artifacts -----------------------------------------------------------------------------------

def _make_dir(path, files: dict[str, bytes]):
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return path


def test_commit_then_list_and_fetch(store, tmp_path):
    files = {"adapter.safetensors": os.urandom(4096), "tokenizer/vocab.json": b"{}", "README.md": b"# m"}
    src = _make_dir(tmp_path / "src", files)
    body = artifacts.commit_dir(store, "models", "runs/r1/adapter", src, {"base_model": "tiny"})
    assert body["uri"] == "s3://models/runs/r1/adapter/"
    assert artifacts.list_committed(store, "models") == ["runs/r1/adapter"]
    manifest = artifacts.read_manifest(store, "models", "runs/r1/adapter")
    assert manifest["base_model"] == "tiny"
    assert sorted(f["path"] for f in manifest["files"]) == sorted(files)

    dest = tmp_path / "dest"
    artifacts.fetch_dir(store, "models", "runs/r1/adapter", dest)
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
    assert (dest / artifacts.MANIFEST).is_file()


def test_uncommitted_prefix_is_invisible(store, tmp_path):
    store.put_bytes("models", "runs/half/adapter.safetensors", b"partial upload")  # crashed before the manifest
    artifacts.commit_dir(store, "models", "runs/done", _make_dir(tmp_path / "src", {"f": b"1"}), {})
    assert artifacts.list_committed(store, "models") == ["runs/done"]
    assert artifacts.read_manifest(store, "models", "runs/half") is None
    with pytest.raises(NotFoundError, match="no manifest"):
        artifacts.fetch_dir(store, "models", "runs/half", tmp_path / "dest")


def test_commit_twice_needs_overwrite(store, tmp_path):
    src = _make_dir(tmp_path / "src", {"f": b"1"})
    artifacts.commit_dir(store, "models", "runs/r1", src, {})
    with pytest.raises(PreconditionError, match="already exists"):
        artifacts.commit_dir(store, "models", "runs/r1", src, {})
    (src / "f").write_bytes(b"2")
    artifacts.commit_dir(store, "models", "runs/r1", src, {}, overwrite=True)
    assert store.get_bytes("models", "runs/r1/f") == b"2"


# --- failures and configuration ------------------------------------------------------------------

def test_unreachable_endpoint_is_a_storage_error():
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    store = S3Store(endpoint, TEST_ACCESS_KEY, TEST_SECRET_KEY, timeout_s=1, retries=0)
    start = time.monotonic()
    for call in (store.ensure_buckets,
                 lambda: store.put_bytes("datasets", "k", b"x"),
                 lambda: store.get_bytes("datasets", "k"),
                 lambda: store.exists("datasets", "k"),
                 lambda: store.list_keys("datasets")):
        with pytest.raises(StorageError, match=f"S3 endpoint http://{endpoint}"):
            call()
    assert time.monotonic() - start < 10


def test_endpoint_forms():
    assert S3Store("http://127.0.0.1:9000", "a", "b").describe() == "S3 endpoint http://127.0.0.1:9000"
    s = S3Store("https://s3.example:443/", "a", "b")
    assert (s.endpoint, s.secure) == ("s3.example:443", True)
    assert S3Store("127.0.0.1:9000", "a", "b", secure=True).describe() == "S3 endpoint https://127.0.0.1:9000"
    for bad in ("http://h:1/path", "ftp://h:1", "h:1/x", ""):
        with pytest.raises(ValidationError):
            S3Store(bad, "a", "b")
    with pytest.raises(ValidationError, match="part_size"):
        S3Store("h:1", "a", "b", part_size=MiB)


def test_store_from_env_local_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = store_from_env({})
    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / ".ftlab" / "storage").resolve()
    assert all((store.root / b).is_dir() for b in BUCKETS)
    other = store_from_env({"FTLAB_STORAGE": "local", "FTLAB_LOCAL_ROOT": str(tmp_path / "elsewhere")})
    assert other.root == (tmp_path / "elsewhere").resolve()


def test_store_from_env_s3(moto_server, s3_store):
    store = store_from_env({"FTLAB_STORAGE": "s3", "FTLAB_S3_ENDPOINT": moto_server.url,
                            "FTLAB_S3_ACCESS_KEY": TEST_ACCESS_KEY, "FTLAB_S3_SECRET_KEY": TEST_SECRET_KEY,
                            "FTLAB_S3_SECURE": "false", "FTLAB_S3_REGION": "us-east-1"})
    assert isinstance(store, S3Store)
    assert store.describe() == f"S3 endpoint {moto_server.url}"
    assert all(store.client.bucket_exists(b) for b in BUCKETS)


def test_store_from_env_s3_reports_every_problem():
    with pytest.raises(ValidationError) as exc:
        store_from_env({"FTLAB_STORAGE": "s3", "FTLAB_S3_SECURE": "maybe", "FTLAB_S3_ACCESS_KEY": "k"})
    text = str(exc.value)
    assert len(exc.value.problems) == 3
    assert "FTLAB_S3_ENDPOINT" in text and "FTLAB_S3_SECURE" in text and "FTLAB_S3_SECRET_KEY" in text


def test_store_from_env_unknown_kind():
    with pytest.raises(ValidationError, match="local, s3") as exc:
        store_from_env({"FTLAB_STORAGE": "gcs"})
    assert "gcs" in str(exc.value)


# --- retries (outages) ------------------------------------------------------------------------

def test_retries_give_up_at_the_deadline_with_a_clear_error():
    from services.common.storage.store import StorageUnavailable
    store = S3Store(f"127.0.0.1:{free_port()}", TEST_ACCESS_KEY, TEST_SECRET_KEY, timeout_s=1, retries=0,
                    retry_deadline_s=1.5)
    start = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"put_bytes \(gave up after \d+s of retries, FTLAB_STORAGE_RETRY_S=1.5\)"):
        store.put_bytes("datasets", "k", b"x")
    assert 0.5 < time.monotonic() - start < 10  # it did wait and retry, and it did stop
    assert store.config()["retry_deadline_s"] == 1.5  # job processes retry alike
    with pytest.raises(ValidationError, match="FTLAB_STORAGE_RETRY_S"):
        store_from_env({"FTLAB_STORAGE": "s3", "FTLAB_S3_ENDPOINT": "h:1", "FTLAB_STORAGE_RETRY_S": "-1"})
