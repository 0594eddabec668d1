"""Data preparation on the real raw files in ../shared: recipes, deterministic draws, stratification,
the study's exact splits, leakage, bad recipes refused with nothing written, the CLI and the flow step."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from services.common.data.task_types.math_numeric import parse_number
from services.common.data import importing as D
from services.common.data import prepare as P
from services.common.data import leakage as L
from services.common.data import tasks as T
from services.common.contract.errors import PreconditionError, ValidationError
from services.common.storage.store import LocalStore
from tests.conftest import ROOT, SHARED, snapshot

RAW = SHARED / "datasets" / "raw"
SEED = SHARED / "datasets" / "seed"
needs_shared = pytest.mark.skipif(not (RAW.is_dir() and (SEED / "pools").is_dir()),
                                  reason="../shared raw datasets not available")
RUNNABLE = ["study-arc", "study-openmath", "arc-raw", "squad-raw", "openmath-raw", "squad-val"]  # study-squad needs the hub


@pytest.fixture(scope="module", autouse=True)
def shared_env():
    """Recipes name ``{shared}``: point it at the test's shared folder, wherever pytest runs from."""
    saved = os.environ.get("FTLAB_SHARED_DIR")
    os.environ["FTLAB_SHARED_DIR"] = str(SHARED)
    yield
    if saved is None:
        os.environ.pop("FTLAB_SHARED_DIR", None)
    else:
        os.environ["FTLAB_SHARED_DIR"] = saved


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Every runnable shipped recipe, prepared once: (store, {recipe: manifest})."""
    if not RAW.is_dir():
        pytest.skip("../shared raw datasets not available")
    store = LocalStore(tmp_path_factory.mktemp("store"))
    return store, {r: P.prepare(store, r) for r in RUNNABLE}


def _recipe(**splits):
    return {"task": "ai2_arc", "splits": splits}


# --- shipped recipes ---------------------------------------------------------------------------------

def test_every_shipped_recipe_loads_and_validates():
    names = P.shipped_recipes()
    assert set(names) == set(RUNNABLE) | {"study-squad"}
    for name in names:
        r = P.load_recipe(name, check_sources=RAW.is_dir())
        assert len(r["_sha256"]) == 64 and set(r["splits"]) in ({"train", "test"}, {"train", "validation", "test"})
        T.get_task(r["task"])


@needs_shared
def test_study_recipes_reproduce_the_studys_splits_exactly(prepared, tmp_path):
    """The study's rule (pandas sample, random_state 42) over its pools gives its seed files item
    for item: the prepared parquet equals the imported seed parquet byte for byte."""
    store, manifests = prepared
    seed = LocalStore(tmp_path / "seed")
    for recipe, short in (("study-arc", "arc"), ("study-openmath", "openmath")):
        imported = D.import_dataset(seed, short, "seed", SEED)
        for split in ("train", "test"):
            assert manifests[recipe]["splits"][split]["sha256"] == imported["splits"][split]["sha256"], (recipe, split)
    # SQuAD: the test split (its pool is here; train needs the hub)
    squad = P.load_recipe("study-squad")
    del squad["splits"]["train"], squad["leakage"]
    m = P.prepare(store, squad, name="squad-study-test")
    imported = D.import_dataset(seed, "squad", "seed", SEED, splits=("test",))
    assert m["splits"]["test"]["sha256"] == imported["splits"]["test"]["sha256"]
    assert manifests["study-openmath"]["leakage"]["exact"] == 3  # the study's own train/test overlap, reported


@needs_shared
def test_raw_recipes_counts_strata_and_records(prepared):
    store, manifests = prepared
    rows = {r: {s: v["rows"] for s, v in m["splits"].items()} for r, m in manifests.items()}
    assert rows["arc-raw"] == rows["squad-raw"] == {"test": 200, "train": 1000}
    assert rows["openmath-raw"] == {"test": 200, "train": 500}

    # SQuAD: the given unanswerable shares, each stratum within one item of n * share
    sq = manifests["squad-raw"]["splits"]
    for split, share in (("train", 0.334), ("test", 0.501)):
        df = D.load_split(store, "squad-raw", split)
        unans = int((df["answers"].map(len) == 0).sum())
        assert abs(unans - share * len(df)) <= 1 and sq[split]["strata"]["unanswerable"] == unans
        assert ((df["answer"] == "") == (df["answers"].map(len) == 0)).all()
    # ARC: each answer letter keeps its share of the pool, within one item
    arc = manifests["arc-raw"]["splits"]["train"]
    pool = arc["pool_strata"]
    df = D.load_split(store, "arc-raw", "train")
    for letter, count in df["answer"].value_counts().items():
        assert abs(count - 1000 * pool[letter] / sum(pool.values())) <= 1
        assert arc["strata"][letter] == count

    # OpenMath: the drops are recorded by reason; what is left is numeric and disjoint from test
    om = manifests["openmath-raw"]["splits"]
    assert om["test"]["drops"] == {P.FILTER_PLAIN_NUMBER: 294}
    assert om["train"]["drops"][P.FILTER_PLAIN_NUMBER] == 294 and om["train"]["drops"][P.LEAKED] >= 200
    assert om["train"]["drops"][P.FILTER_PROMPT_TOKENS] >= 1
    train, test = D.load_split(store, "openmath-raw", "train"), D.load_split(store, "openmath-raw", "test")
    assert not set(train["question"]) & set(test["question"])
    assert train["answer"].map(lambda a: parse_number(a) is not None).all()

    # the manifest says how each split was made
    m = manifests["squad-raw"]
    assert m["source"] == "prepare" and m["recipe"]["task"] == "squad_v2" and len(m["recipe_sha256"]) == 64
    src = m["splits"]["test"]["source"]["files"]
    path = RAW / "squad" / "squad_v2_dev_16articles_official_ids.json"
    assert src == {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    assert m["splits"]["test"]["seed"] == 42 and m["splits"]["test"]["read"] == 6078
    text = P.describe(store, "squad-raw")
    assert "stratify=answerable" in text and "leakage train vs test" in text


@needs_shared
def test_token_budget_filter_counts_real_qwen3_prompt_tokens(prepared):
    """The filter's count equals the Qwen3 tokenizer's count of the rendered chat (checked with the
    tokenizers library on the template's known output, thinking disabled)."""
    from tokenizers import Tokenizer
    store, _ = prepared
    task = T.get_task("openmath")
    rows = D.load_split(store, "openmath-raw", "train").head(5).to_dict("records")
    tok = Tokenizer.from_file(str(SHARED / "tokenizers" / "qwen3" / "tokenizer.json"))
    expected = []
    for r in rows:
        sys_msg, user = (m["content"] for m in T.build_messages(task, r))
        text = (f"<|im_start|>system\n{sys_msg}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                "<|im_start|>assistant\n<think>\n\n</think>\n\n")
        expected.append(len(tok.encode(text, add_special_tokens=False).ids))
    assert P.prompt_token_counts(task, rows, "{shared}/tokenizers/qwen3") == expected
    assert max(expected) <= 512


@needs_shared
def test_squad_keeps_every_gold_and_a_gold_spelled_none_stays_answerable(prepared, tmp_path):
    store, _ = prepared
    path = RAW / "squad" / "squad_v2_dev_16articles_official_ids.json"
    recipe = {"task": "squad_v2", "splits": {"test": {"source": {"path": str(path)}, "n": 6078, "seed": 0}}}
    P.prepare(store, recipe, name="squad-dev-all")
    df = D.load_split(store, "squad-dev-all", "test").set_index("id")
    assert list(df.loc["56ddde6b9a695914005b962c", "answers"]) == [
        "10th century", "the first half of the 10th century", "10th", "10th"]
    assert df.loc["56ddde6b9a695914005b962c", "answer"] == "10th century"
    assert list(df.loc["5726a299dd62a815002e8b9e", "answers"]) == ["None", "None", "None"]  # answerable
    assert (df["answers"].map(len) == 0).sum() == 3168  # is_impossible in the official file
    # the other sources agree: hf keeps every gold, seed gives a one-element list
    hf = D.import_dataset(LocalStore(tmp_path / "hf"), "squad", "hf", SHARED / "datasets" / "hf")
    assert hf["splits"]["test"]["rows"] == 200
    seed = LocalStore(tmp_path / "seed")
    D.import_dataset(seed, "squad", "seed", SEED, splits=("test",))
    s = D.load_split(seed, "squad", "test")
    assert (s["answers"].map(len) == (s["answer"] != "").astype(int)).all()
    assert all(list(a) == [g] for a, g in zip(s["answers"], s["answer"]) if g)


# --- determinism ---------------------------------------------------------------------------------------

@needs_shared
def test_same_recipe_same_bytes_another_seed_other_bytes(prepared, tmp_path):
    store, manifests = prepared
    again = LocalStore(tmp_path / "again")
    m = P.prepare(again, "squad-raw")
    for split in ("train", "test"):
        a = store.get_bytes("datasets", f"squad-raw/{split}.parquet")
        b = again.get_bytes("datasets", f"squad-raw/{split}.parquet")
        assert a == b and hashlib.sha256(b).hexdigest() == m["splits"][split]["sha256"]
    recipe = yaml.safe_load(P.recipe_path("arc-raw").read_text())
    recipe["splits"]["test"]["seed"] = 7
    other = P.prepare(again, recipe, name="arc-seed7")
    assert other["splits"]["test"]["sha256"] != manifests["arc-raw"]["splits"]["test"]["sha256"]
    with pytest.raises(PreconditionError, match="already exists \\(--overwrite replaces it\\)"):
        P.prepare(again, "squad-raw")


def test_targets_are_within_one_item_and_sum_to_n():
    rnd = random.Random(0)
    for _ in range(200):
        k, n = rnd.randint(1, 6), rnd.randint(1, 2000)
        w = [rnd.random() for _ in range(k)]
        shares = {f"s{i}": x / sum(w) for i, x in enumerate(w)}
        t = P.targets(n, shares)
        assert sum(t.values()) == n and all(abs(t[s] - n * shares[s]) < 1 for s in shares)


# --- leakage -------------------------------------------------------------------------------------------

def test_near_pairs_match_brute_force_jaccard():
    rnd = random.Random(1)
    vocab = [f"w{i}" for i in range(12)]
    a = [" ".join(rnd.choices(vocab, k=rnd.randint(1, 9))) for _ in range(80)]
    b = [" ".join(rnd.choices(vocab, k=rnd.randint(1, 9))) for _ in range(60)]
    for n, th in itertools.product((1, 2, 3), (0.3, 0.5, 0.8, 1.0)):
        brute = sorted((i, j) for i, j in itertools.product(range(len(a)), range(len(b)))
                       if L.jaccard(L.ngrams(a[i], n), L.ngrams(b[j], n)) >= th)
        assert sorted((i, j) for i, j, _ in L.near_pairs(a, b, th, n)) == brute, (n, th)


@needs_shared
def test_leakage_finds_planted_duplicates_and_drops_them(tmp_path):
    test_recs = [json.loads(x) for x in (RAW / "arc" / "arc_challenge_test_1172.jsonl").read_text().splitlines()[:50]]
    train_recs = [json.loads(x) for x in (RAW / "arc" / "arc_challenge_train_pool_1056.jsonl").read_text().splitlines()[:60]]
    exact = dict(test_recs[0], id="planted-exact")
    norm = dict(test_recs[1], id="planted-normalised", question=test_recs[1]["question"].upper().replace(".", " ."))
    words = test_recs[2]["question"].split()
    near = dict(test_recs[2], id="planted-near", question=" ".join(words[:-1] + ["banana"]))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_recs))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_recs + [exact, norm, near]))

    def recipe(drop):
        return _recipe(test={"source": {"path": str(tmp_path / "test.jsonl")}, "n": 50, "seed": 0},
                       train={"source": {"path": str(tmp_path / "train.jsonl")}, "n": 61 if drop else 63, "seed": 0}) | {
            "leakage": {"drop": drop, "near_threshold": 0.6}}

    store = LocalStore(tmp_path / "store")
    reported = P.prepare(store, recipe(False), name="reported")["leakage"]
    assert (reported["exact"], reported["normalised"]) == (1, 2)
    assert reported["train_ids_exact"] == ["planted-exact"]
    assert set(reported["train_ids_normalised"]) == {"planted-exact", "planted-normalised"}
    assert reported["train_ids_near"] == ["planted-near"]
    assert reported["near_examples"][0]["test_id"] == test_recs[2]["id"]
    m = P.prepare(store, recipe(True), name="dropped")
    assert m["splits"]["train"]["drops"] == {P.LEAKED: 2} and m["splits"]["train"]["rows"] == 61
    assert (m["leakage"]["exact"], m["leakage"]["normalised"], m["leakage"]["near"]) == (0, 0, 1)
    assert not {"planted-exact", "planted-normalised"} & set(D.load_split(store, "dropped", "train")["id"])


# --- bad recipes: every problem at once, nothing written ------------------------------------------------

def test_bad_recipe_static_problems_all_at_once(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.ensure_buckets()
    before = snapshot(store)
    bad = {"task": "mmlu", "colour": "red", "leakage": {"target": "dev", "near_threshold": 2},
           "splits": {"train": {"source": {"path": str(tmp_path / "missing.jsonl")}, "n": 0, "method": "magic",
                                "stratify": "answerable", "filters": {"max_prompt_tokens": 10, "size": 1}},
                      "test": {"source": {"hub": "x/y"}, "n": 5, "seed": -1, "stratify": "answer",
                               "ratio": {"A": 0.5, "Z": 0.6}}}}
    with pytest.raises(ValidationError) as e:
        P.prepare(store, bad)
    text = " | ".join(e.value.problems)
    for needle in ("unknown task 'mmlu'", "unknown key 'colour'", "leakage.target 'dev'", "near_threshold",
                   "missing.jsonl not found", "n must be a positive integer", "unknown 'magic'",
                   "unknown key 'size'", "needs filters.tokenizer", "split is required with hub",
                   "seed must be a non-negative", "must sum to 1"):
        assert needle in text, needle
    assert snapshot(store) == before


@needs_shared
def test_bad_recipe_data_problems_all_at_once(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.ensure_buckets()
    before = snapshot(store)
    om = yaml.safe_load(P.recipe_path("openmath-raw").read_text())
    om["splits"]["train"]["n"] = 1000  # only ~500 survive the filters
    with pytest.raises(ValidationError) as e:
        P.prepare(store, om)
    assert any("splits.train: n=1000 but only" in x for x in e.value.problems)
    sq = yaml.safe_load(P.recipe_path("squad-raw").read_text())
    sq["splits"]["train"]["ratio"] = {"answerable": 0.5, "unanswerable": 0.5}  # 500 > 348 unanswerable
    sq["splits"]["test"]["n"] = 7000
    with pytest.raises(ValidationError) as e:
        P.prepare(store, sq)
    text = " | ".join(e.value.problems)
    assert "stratum 'unanswerable' needs 500 item(s) but the pool has 348" in text
    assert "splits.test: n=7000 but only 6078" in text
    with pytest.raises(ValidationError, match="applies to squad_v2"):
        P.prepare(store, _recipe(test={"source": {"path": str(RAW / "arc")}, "n": 5, "stratify": "answerable"}))
    assert snapshot(store) == before


# --- the CLI through its entry point, and the flow's data step --------------------------------------------

@needs_shared
def test_cli_import_reports_drops_strict_refuses_prepare_and_show(tmp_path):
    env = {**os.environ, "FTLAB_STORAGE": "local", "FTLAB_LOCAL_ROOT": str(tmp_path / "store"),
           "FTLAB_SHARED_DIR": str(SHARED), "HF_HUB_OFFLINE": "1"}

    def ftlab(*args):
        return subprocess.run([sys.executable, "-m", "ftlab.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    hf = str(SHARED / "datasets" / "hf")
    r = ftlab("data", "import", "--task", "openmath", "--source", "hf", "--path", hf, "--strict")
    assert r.returncode == 2 and "train: dropped 162 of 800 record(s): non_numeric_gold 162" in r.stderr
    assert not (tmp_path / "store" / "datasets").exists() or not any((tmp_path / "store" / "datasets").iterdir())
    r = ftlab("data", "import", "--task", "openmath", "--source", "hf", "--path", hf)
    assert r.returncode == 0 and "train: kept 638 of 800; dropped 162 (non_numeric_gold 162)" in r.stdout
    r = ftlab("data", "prepare", "arc-raw", "--name", "arc")
    assert r.returncode == 0, r.stderr
    r = ftlab("data", "show", "arc")
    assert r.returncode == 0 and "arc-raw.yaml" in r.stdout and "draw: seeded n=1000 seed=42 stratify=answer" in r.stdout
    r = ftlab("data", "list")
    assert "arc" in r.stdout and "openmath" in r.stdout
    r = ftlab("data", "leakage", "--task", "openmath", str(SEED / "train-OpenMathInstruct-2.parquet"),
              str(SEED / "test-OpenMathInstruct-2.parquet"))
    assert r.returncode == 0 and json.loads(r.stdout)["exact"] == 3  # the study's split, see docs/DATA.md


@needs_shared
def test_flow_data_step_prepares_a_dataset_by_recipe(tmp_path, monkeypatch):
    pytest.importorskip("prefect")
    from flows.experiment import plan
    from flows.pipeline import import_data
    from services.common.storage.artifacts import read_manifest
    monkeypatch.setenv("FTLAB_STORAGE", "local")
    monkeypatch.setenv("FTLAB_LOCAL_ROOT", str(tmp_path / "store"))
    exp = plan({"name": "t", "base_models": ["Qwen3-tiny-base"], "datasets": ["arc"],
                "data": {"prepare": {"arc": "study-arc"}}, "train": [{"lora": {"r": 4}}],
                "evaluate": {"tasks": [{"task": "ai2_arc", "limit": 4}]}})
    steps = import_data.fn(exp)
    assert [s["status"] for s in steps] == ["succeeded"] and steps[0]["outputs"]["recipe"] == "study-arc"
    m = read_manifest(LocalStore(tmp_path / "store"), "datasets", "arc")
    assert m["source"] == "prepare" and m["splits"]["train"]["rows"] == 1000
    assert [s["status"] for s in import_data.fn(exp)] == ["skipped"]


def test_prepare_and_leakage_import_without_torch():
    code = ("import sys\nfor m in ('torch', 'transformers', 'peft', 'bitsandbytes'):\n    sys.modules[m] = None\n"
            "import services.common.data.prepare, services.common.data.leakage\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@needs_shared
def test_hub_source_and_unreadable_sources(tmp_path, monkeypatch):
    """study-squad's train split reads the hub: here the hub is replaced by the official raw train
    file's records; the manifest names the hub split. An unreadable source is one more problem."""
    raw_train = P.read_file(RAW / "squad" / "squad_v2_train_first10articles.json")
    calls = []
    monkeypatch.setattr(P, "load_hub", lambda hub, config, split: calls.append((hub, config, split)) or raw_train)
    store = LocalStore(tmp_path / "store")
    m = P.prepare(store, "study-squad")
    assert calls == [("rajpurkar/squad_v2", None, "train")]
    assert m["splits"]["train"]["source"] == {"hub": "rajpurkar/squad_v2", "config": None, "split": "train"}
    assert m["splits"]["train"]["rows"] == 1000 and m["splits"]["train"]["read"] == 4719
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValidationError) as e:
        P.prepare(store, _recipe(test={"source": {"path": str(tmp_path / "bad.jsonl")}, "n": 1},
                                 train={"source": {"path": str(tmp_path / "bad.jsonl")}, "n": 1}), name="bad")
    assert [x.split(":")[0] for x in e.value.problems] == ["splits.test.source", "splits.train.source"]
