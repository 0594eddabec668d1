"""A validation split (model selection) from ``ftlab data prepare``: disjoint from test even when both
are drawn from the same file, leak-checked, recorded in the manifest; the shipped squad-val recipe."""
from __future__ import annotations

import json
import os

import pytest

from services.common.data import importing as D
from services.common.data import leakage as L
from services.common.data import prepare as P
from services.common.storage.store import LocalStore
from tests.conftest import SHARED

RAW = SHARED / "datasets" / "raw"
needs_shared = pytest.mark.skipif(not RAW.is_dir(), reason="../shared raw datasets not available")


@pytest.fixture(autouse=True)
def shared_env(monkeypatch):
    monkeypatch.setenv("FTLAB_SHARED_DIR", str(SHARED))


@needs_shared
def test_validation_and_test_from_one_file_are_disjoint(tmp_path):
    """30 ARC questions, test draws 20 and validation 15 from the same file: without cleaning the
    pools they must overlap (35 > 30); with it they cannot, and the pool shrinks by the overlap."""
    recs = [json.loads(x) for x in (RAW / "arc" / "arc_challenge_test_1172.jsonl").read_text().splitlines()[:30]]
    recs.append(dict(recs[0], id="planted-normalised", question=recs[0]["question"].upper()))
    src = tmp_path / "pool.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    train = RAW / "arc" / "arc_challenge_train_pool_1056.jsonl"

    def recipe(n_val):
        return {"task": "ai2_arc", "leakage": {"target": "train"},
                "splits": {"test": {"source": {"path": str(src)}, "n": 20, "seed": 1},
                           "validation": {"source": {"path": str(src)}, "n": n_val, "seed": 2},
                           "train": {"source": {"path": str(train)}, "n": 50, "seed": 3}}}

    store = LocalStore(tmp_path / "store")
    with pytest.raises(Exception) as e:  # 31 - 20 test items (and the planted twin of one) < 15
        P.prepare(store, recipe(15), name="too-many")
    assert "splits.validation: n=15 but only" in str(e.value)
    m = P.prepare(store, recipe(10), name="arc-val")
    test, val, tr = (D.load_split(store, "arc-val", s) for s in ("test", "validation", "train"))
    assert (len(test), len(val), len(tr)) == (20, 10, 50)
    assert not set(test["id"]) & set(val["id"]) and not (set(test["id"]) | set(val["id"])) & set(tr["id"])
    norm = {L.normalise_text(q) for q in test["question"]}
    assert not {L.normalise_text(q) for q in val["question"]} & norm
    assert m["splits"]["validation"]["pool"] == 31 - m["splits"]["validation"]["drops"][P.LEAKED]
    assert m["splits"]["validation"]["drops"][P.LEAKED] >= 20
    (d,) = m["disjoint"]
    assert (d["split"], d["against"], d["exact"], d["normalised"]) == ("validation", "test", 0, 0)
    assert m["leakage"]["against"] == ["test", "validation"]
    assert "leakage validation vs test: exact 0, normalised 0" in P.describe(store, "arc-val")


@needs_shared
def test_shipped_squad_val_keeps_squad_raw_test_and_adds_a_disjoint_validation(tmp_path):
    store = LocalStore(tmp_path / "store")
    raw, val = P.prepare(store, "squad-raw"), P.prepare(store, "squad-val")
    assert val["splits"]["test"]["sha256"] == raw["splits"]["test"]["sha256"]  # the same test items
    assert val["splits"]["validation"]["rows"] == 100
    assert val["splits"]["validation"]["strata"] == {"answerable": 50, "unanswerable": 50}
    t, v = D.load_split(store, "squad-val", "test"), D.load_split(store, "squad-val", "validation")
    assert not set(t["id"]) & set(v["id"])
    assert val["disjoint"][0]["exact"] == 0 and val["leakage"]["exact"] == 0
