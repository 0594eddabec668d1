"""No silent corruption: every kind of committed artifact (model, dataset, evaluation, checkpoint)
is damaged in storage in every way we know (same-size byte flip, truncation, a file replaced by
another committed artifact's file, a missing file, a manifest rewritten to match a changed file),
on both backends (a local folder and moto's real S3 server process). Each time the artifact's own
reader refuses it naming the artifact, the file and both digests — or, for the edited manifest,
the scrub says the children's lineage disagrees — and ``ftlab verify`` finds it.

The artifacts are small stand-ins committed through the real commit paths (the model through
``modeling.commit_base_model``, the dataset through ``import_dataset``, checkpoints through
``checkpoints.upload``), so the 40 cases stay fast; one end-to-end case runs a real evaluation
job of the tiny model through the evaluator service."""
from __future__ import annotations

import base64
import hashlib
import json
import os

import pandas as pd
import pytest

from services.common.storage import artifacts
from services.common.torch_utils import modeling
from services.common.storage import scrub
from services.common.storage.artifacts import IntegrityError
from services.common.data.importing import import_dataset, load_split
from services.common.storage.store import LocalStore
from services.evaluator.compare import load_eval
from services.trainer import checkpoints
from tests.conftest import SEED_DATA, TINY, require_shared, snapshot
from tests.s3_server import TEST_ACCESS_KEY, TEST_SECRET_KEY

CK_PREFIX = "checkpoints/trainer/out-abc123"
FAULTS = ("flip", "truncate", "swap", "missing", "manifest_edit")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        s = LocalStore(tmp_path / "store")
        s.ensure_buckets()
        return s
    return request.getfixturevalue("s3_store")


def _model_dir(path, seed: int):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "stand-in", "seed": seed}))
    (path / "model.safetensors").write_bytes(os.urandom(64 * 1024 + seed))
    return path


def _eval_dir(path, accuracy: float):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"summary": {"overall_accuracy": accuracy}}))
    pd.DataFrame({"task": ["ai2_arc"] * 3, "id": ["a", "b", "c"], "output": ["x", "y", "z"],
                  "gold": ["A", "B", "C"], "correct": [accuracy > 0.5, False, True]}).to_parquet(path / "predictions.parquet")
    return path


def _checkpoint_dir(path, step: int):
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(os.urandom(32 * 1024 + step))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return path


@pytest.fixture
def world(store, tmp_path):
    """Two committed artifacts of each kind (the second is where 'swap' takes a file from), and
    children that record their parents' manifest digests: a trained model (base + dataset) and
    an evaluation of the base."""
    require_shared()
    base = modeling.commit_base_model(store, "base", _model_dir(tmp_path / "m1", 1), {"source": "test"})
    modeling.commit_base_model(store, "other", _model_dir(tmp_path / "m2", 2), {"source": "test"})
    arc = import_dataset(store, "arc", "seed", SEED_DATA)
    import_dataset(store, "squad", "seed", SEED_DATA)
    artifacts.commit_dir(store, "models", "child", _model_dir(tmp_path / "m3", 3), {
        "kind": "trained", "name": "child", "parents": ["base"], "base_model": "base",
        "base_manifest_sha": artifacts.manifest_digest(base), "dataset": "arc",
        "dataset_manifest_sha": artifacts.manifest_digest(arc)})
    artifacts.commit_dir(store, "evaluations", "base/e1", _eval_dir(tmp_path / "e1", 0.25), {
        "kind": "evaluation", "model": "base", "eval_id": "e1", "parents": ["base"],
        "model_manifest_sha": artifacts.manifest_digest(base)})
    artifacts.commit_dir(store, "evaluations", "other/e2", _eval_dir(tmp_path / "e2", 0.75), {
        "kind": "evaluation", "model": "other", "eval_id": "e2", "parents": ["other"]})
    checkpoints.upload(store, CK_PREFIX, 3, _checkpoint_dir(tmp_path / "c1", 3), {"output_name": "out"})
    checkpoints.upload(store, "checkpoints/trainer/else-def456", 5, _checkpoint_dir(tmp_path / "c2", 5),
                       {"output_name": "else"})
    return store


# kind -> (bucket, artifact prefix, the file damaged, the other artifact 'swap' takes it from)
KINDS = {
    "model": ("models", "base", "model.safetensors", "other"),
    "dataset": ("datasets", "arc", "train.parquet", "squad"),
    "evaluation": ("evaluations", "base/e1", "predictions.parquet", "other/e2"),
    "checkpoint": ("jobs", f"{CK_PREFIX}/step-3", "adapter_model.safetensors", "checkpoints/trainer/else-def456/step-5"),
}
# what records each kind's manifest digest (its children in the lineage); evaluations and
# checkpoints have none, so an edited manifest of theirs is not detectable (docs/OPERATIONS.md)
CHILDREN = {"model": ["s3://models/child/", "s3://evaluations/base/e1/"], "dataset": ["s3://models/child/"]}


def read(kind: str, store, tmp_path):
    """The artifact read the way its consumers read it."""
    if kind == "model":
        return modeling.fetch_model(store, "base", tmp_path / "job")
    if kind == "dataset":
        return load_split(store, "arc", "train")
    if kind == "evaluation":
        return load_eval(store, "base/e1")
    return checkpoints.fetch_latest(store, CK_PREFIX, tmp_path / "resume")


def damage(store, fault: str, bucket: str, prefix: str, path: str, other: str) -> bytes | None:
    """Apply ``fault`` to ``bucket/prefix/path`` behind the store's back; the bytes now there."""
    key = f"{prefix}/{path}"
    data = store.get_bytes(bucket, key)
    if fault == "missing":
        store.delete(bucket, key)
        return None
    if fault in ("flip", "manifest_edit"):
        new = bytearray(data)
        new[len(new) // 2] ^= 0x01  # same size, one bit
        new = bytes(new)
    elif fault == "truncate":
        new = data[: len(data) // 2]
    else:  # swap
        new = store.get_bytes(bucket, f"{other}/{path}")
    store.put_bytes(bucket, key, new)
    if fault == "manifest_edit":  # someone "fixes" the manifest to match the changed file
        m = artifacts.read_manifest(store, bucket, prefix)
        next(f for f in m["files"] if f["path"] == path)["sha256"] = hashlib.sha256(new).hexdigest()
        artifacts.put_json(store, bucket, f"{prefix}/{artifacts.MANIFEST}", m)
    return new


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_MODEL_CACHE_DIR", str(tmp_path / "model-cache"))


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_fault_is_refused_on_read_and_found_by_the_scrub(world, kind, fault, tmp_path, fresh_cache):
    store = world
    bucket, prefix, path, other = KINDS[kind]
    uri = f"s3://{bucket}/{prefix}/"
    expected = next(f for f in artifacts.read_manifest(store, bucket, prefix)["files"] if f["path"] == path)
    new = damage(store, fault, bucket, prefix, path, other)

    results = {r.uri: r for r in scrub.scrub(store)}
    if fault == "manifest_edit":
        read(kind, store, tmp_path)  # the bytes match the (edited) manifest: only the lineage can tell
        assert results[uri].status == "intact"
        for child in CHILDREN.get(kind, []):
            assert results[child].status == "lineage", results[child]
            assert any(f"s3://{bucket}/{prefix}/" in p and "edited or re-committed" in p
                       for p in results[child].problems)
        assert sum(r.status != "intact" for r in results.values()) == len(CHILDREN.get(kind, []))
        return

    with pytest.raises(IntegrityError) as exc:
        read(kind, store, tmp_path)
    msg = str(exc.value)
    assert uri in msg and path in msg and expected["sha256"] in msg, msg
    if new is None:
        assert "is missing" in msg
    else:
        assert f"found sha256 {hashlib.sha256(new).hexdigest()} ({len(new)} bytes)" in msg
    assert results[uri].status == ("missing" if fault == "missing" else "corrupt")
    assert any(path in p for p in results[uri].problems)
    assert [u for u, r in results.items() if r.status != "intact"] == [uri]  # nothing else flagged


def test_a_damaged_model_is_refused_even_when_another_file_is_fine_and_every_problem_is_named(world, tmp_path,
                                                                                             fresh_cache):
    store = world
    damage(store, "flip", "models", "base", "model.safetensors", "other")
    store.delete("models", "base/config.json")
    with pytest.raises(IntegrityError) as exc:
        modeling.fetch_model(store, "base", tmp_path / "job")
    assert len(exc.value.problems) == 2 and "config.json is missing" in str(exc.value)
    assert not (tmp_path / "job" / "models" / "base" / "model.safetensors").exists()  # nothing left to load


def test_a_cache_entry_is_hashed_once_and_a_changed_entry_is_fetched_again(world, tmp_path, fresh_cache, monkeypatch):
    """The cache's download is the verified fetch; a hit costs no hashing. An entry whose file
    was changed in place (size or mtime) is dropped and fetched (and verified) again."""
    from services.common.storage import model_cache
    store = world
    modeling.fetch_model(store, "base", tmp_path / "j1")
    hashed = []
    real = store.get_file
    monkeypatch.setattr(store, "get_file", lambda *a: hashed.append(a[1]) or real(*a))
    modeling.fetch_model(store, "base", tmp_path / "j2")
    assert hashed == []  # a hit: no download, no hash
    entry = next(p for p in model_cache.cache_dir().iterdir() if p.is_dir() and not p.name.startswith("."))
    weights = entry / "model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(b"\0" * weights.stat().st_size)  # same size, new mtime
    d, _ = modeling.fetch_model(store, "base", tmp_path / "j3")
    assert sorted(hashed) == ["base/config.json", "base/model.safetensors"]  # fetched (and hashed) again
    assert (d / "model.safetensors").read_bytes() == store.get_bytes("models", "base/model.safetensors")


def test_an_unreadable_manifest_is_corrupt(world):
    store = world
    store.put_bytes("models", "other/manifest.json", b'{"files": [')
    with pytest.raises(IntegrityError, match="other/manifest.json is not valid JSON"):
        artifacts.read_manifest(store, "models", "other")
    results = {r.uri: r for r in scrub.scrub(store, ["models"])}
    assert results["s3://models/other/"].status == "corrupt"


# hand edits of a manifest, each a per-artifact result, never a crashed scrub (found by a
# new user's trial: each of these aborted `ftlab verify` with a traceback)
EDITED_MANIFESTS = {
    "not an object": lambda m: [],
    "files not a list": lambda m: {**m, "files": "model.safetensors"},
    "an entry without size": lambda m: {**m, "files": [{k: v for k, v in f.items() if k != "size"} for f in m["files"]]},
    "an entry without sha256": lambda m: {**m, "files": [{k: v for k, v in f.items() if k != "sha256"} for f in m["files"]]},
    "a size that is no number": lambda m: {**m, "files": [{**f, "size": "big"} for f in m["files"]]},
    "an entry that is a string": lambda m: {**m, "files": [f["path"] for f in m["files"]]},
    "a path out of the artifact": lambda m: {**m, "files": [{**f, "path": "../../datasets/arc/" + f["path"]}
                                                             for f in m["files"]]},
}


@pytest.mark.parametrize("edit", list(EDITED_MANIFESTS))
def test_an_edited_manifest_is_one_corrupt_result_and_its_children_say_so(world, edit, tmp_path):
    store = world
    manifest = json.loads(store.get_bytes("models", "base/manifest.json"))
    store.put_bytes("models", "base/manifest.json", json.dumps(EDITED_MANIFESTS[edit](manifest)).encode())
    state = tmp_path / "state.jsonl"
    results = {r.uri: r for r in scrub.scrub(store, ["models", "evaluations"], state)}
    assert results["s3://models/base/"].status == "corrupt", results["s3://models/base/"]
    assert results["s3://models/other/"].status == "intact"  # the rest is still verified
    assert results["s3://models/child/"].status == "lineage"  # it was made from the base as committed
    assert not state.exists()


def test_a_scrub_that_crashes_leaves_nothing_to_resume(world, tmp_path):
    store = world
    state = tmp_path / "state.jsonl"
    real = store.hash_object

    def broken(bucket, key):
        if key.startswith("other/"):
            raise OSError("disk gone")
        return real(bucket, key)
    store.hash_object = broken
    with pytest.raises(OSError):
        scrub.scrub(store, ["models"], state)
    assert not state.exists()  # the next scrub starts over instead of "resuming" a crash


def test_the_scrub_resumes_where_an_interrupted_run_stopped(world, tmp_path):
    store = world
    state = tmp_path / "state.jsonl"
    seen = []

    def stop_after_two(res, resumed):
        seen.append((res.uri, resumed))
        if len(seen) == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        scrub.scrub(store, ["models", "datasets"], state, on_result=stop_after_two)
    assert len(state.read_text().splitlines()) == 2
    hashed = []
    real = store.hash_object
    store.hash_object = lambda b, k: hashed.append(k) or real(b, k)
    seen.clear()
    results = scrub.scrub(store, ["models", "datasets"], state, on_result=lambda r, resumed: seen.append((r.uri, resumed)))
    assert [resumed for _, resumed in seen] == [True, True] + [False] * (len(seen) - 2)
    assert all(r.status == "intact" for r in results) and len(results) == 5  # base child other arc squad
    assert not any(k.startswith(("base/", "child/")) for k in hashed)  # the first two were not hashed again
    assert not state.exists()  # finished: the next scrub starts over


def test_targets_select_artifacts_and_bad_ones_are_all_named(world):
    from services.common.contract.errors import ValidationError
    store = world
    assert scrub.select(store, ["models/base", "s3://evaluations/base/e1/"]) == [("models", "base"),
                                                                               ("evaluations", "base/e1")]
    assert scrub.select(store, ["jobs"]) == [("jobs", "checkpoints/trainer/else-def456/step-5"),
                                             ("jobs", f"{CK_PREFIX}/step-3")]
    with pytest.raises(ValidationError) as exc:
        scrub.select(store, ["nope", "models/absent"])
    assert len(exc.value.problems) == 2 and "not a bucket" in exc.value.problems[0]


def test_ftlab_verify_exit_codes_summary_and_json(world, monkeypatch, capsys, tmp_path):
    from ftlab.cli import main
    store = world
    monkeypatch.setenv("FTLAB_CACHE_DIR", str(tmp_path / "cache"))
    if isinstance(store, LocalStore):
        monkeypatch.setenv("FTLAB_STORAGE", "local")
        monkeypatch.setenv("FTLAB_LOCAL_ROOT", str(store.root))
    else:
        cfg = store.config()
        monkeypatch.setenv("FTLAB_STORAGE", "s3")
        monkeypatch.setenv("FTLAB_S3_ENDPOINT", cfg["endpoint"])
        monkeypatch.setenv("FTLAB_S3_ACCESS_KEY", TEST_ACCESS_KEY)
        monkeypatch.setenv("FTLAB_S3_SECRET_KEY", TEST_SECRET_KEY)
        monkeypatch.setenv("FTLAB_S3_REGION", "us-east-1")
    assert main(["verify"]) == 0
    out = capsys.readouterr().out
    assert "verified 9 artifacts" in out and "9 intact, 0 corrupt, 0 missing, 0 lineage" in out
    damage(store, "flip", "datasets", "arc", "test.parquet", "")
    store.delete("jobs", f"{CK_PREFIX}/step-3/trainer_state.json")
    assert main(["verify", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert {k: doc["summary"][k] for k in scrub.STATUSES} == {"intact": 7, "corrupt": 1, "missing": 1, "lineage": 0}
    assert {r["uri"]: r["status"] for r in doc["results"] if r["status"] != "intact"} == {
        "s3://datasets/arc/": "corrupt", f"s3://jobs/{CK_PREFIX}/step-3/": "missing"}
    assert main(["verify", "models"]) == 0  # only the models bucket: all intact
    capsys.readouterr()
    assert main(["verify", "nowhere/x"]) == 2


def test_s3_uploads_carry_their_sha256_single_and_multipart(s3_store, moto_server, tmp_path):
    """Every PUT and every part carries x-amz-checksum-sha256, so MinIO and AWS recompute it and
    refuse bytes that arrived otherwise (BadDigest). moto 5.2.5 does not verify it (it stores the
    value and answers it back with x-amz-checksum-mode: ENABLED): what this proves is that the
    header goes out right — the stored value is the file's sha256, per part for multipart."""
    from services.common.storage.s3 import S3Store
    MiB = 1024 * 1024
    store = S3Store(moto_server.endpoint, TEST_ACCESS_KEY, TEST_SECRET_KEY, region="us-east-1", part_size=5 * MiB)
    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    small.write_bytes(os.urandom(1000))
    large.write_bytes(os.urandom(12 * MiB))  # parts of 5, 5 and 2 MiB
    assert store.put_file("models", "c/small.bin", small) == artifacts.sha256_file(small)
    assert store.put_file("models", "c/large.bin", large) == artifacts.sha256_file(large)

    def stored(key):
        r = store.client._execute("HEAD", "models", key, headers={"x-amz-checksum-mode": "ENABLED"})
        return r.headers.get("x-amz-checksum-sha256"), r.headers.get("etag", "")
    b64 = lambda data: base64.b64encode(hashlib.sha256(data).digest()).decode()  # noqa: E731
    assert stored("c/small.bin")[0] == b64(small.read_bytes())
    value, etag = stored("c/large.bin")
    data = large.read_bytes()
    parts = [hashlib.sha256(data[i:i + 5 * MiB]).digest() for i in range(0, len(data), 5 * MiB)]
    assert etag.strip('"').endswith("-3")
    assert value.split("-")[0] == base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()  # composite
    assert store.get_bytes("models", "c/large.bin") == data
    s3_store.put_bytes("models", "c/bytes", b"manifest")
    assert stored("c/bytes")[0] == b64(b"manifest")


def test_an_evaluation_job_of_a_corrupted_model_fails_naming_the_file_and_commits_nothing(fresh_cache, services):
    """End to end through the evaluator service: the tiny model's weights get one bit flipped in
    storage (same size); the job FAILS with the file and both digests, and no evaluation exists."""
    from services.common.rpc.clients import JobFailed
    store = services["store"]
    weights = next(f for f in artifacts.read_manifest(store, "models", TINY)["files"]
                   if f["path"].endswith(".safetensors"))
    damage(store, "flip", "models", TINY, weights["path"], "")
    before = snapshot(store)["evaluations"]
    with pytest.raises(JobFailed) as exc:
        services["clients"]["evaluator"].run({"model": TINY, "tasks": [{"task": "arc", "limit": 2}],
                                              "max_new_tokens": 4}, "ev-corrupt", timeout_s=300)
    err = exc.value.job.error
    assert f"s3://models/{TINY}/" in err and weights["path"] in err and weights["sha256"] in err, err
    assert "does not match its manifest" in err
    assert snapshot(store)["evaluations"] == before == []
