"""Data import from ../shared (seed and hf sources) and a faked hub, into a LocalStore."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from services.common.data.task_types.math_numeric import parse_number
from services.common.data import importing as D
from services.common.data import tasks as T
from services.common.storage.artifacts import read_manifest
from services.common.contract.errors import NotFoundError, PreconditionError, ValidationError
from services.common.storage.store import LocalStore

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SEED = SHARED / "datasets" / "seed"
HF = SHARED / "datasets" / "hf"
needs_shared = pytest.mark.skipif(not (SEED.is_dir() and HF.is_dir()), reason="../shared datasets not available")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """All three tasks from both sources, imported once: {(short, source): manifest}."""
    if not (SEED.is_dir() and HF.is_dir()):
        pytest.skip("../shared datasets not available")
    store = LocalStore(tmp_path_factory.mktemp("store"))
    manifests = {}
    for short in ("arc", "squad", "openmath"):
        for source, path in (("seed", SEED), ("hf", HF)):
            manifests[short, source] = D.import_dataset(store, short, source, path, name=f"{short}-{source}")
    return store, manifests


# --- seed and hf sources --------------------------------------------------------------------------

@needs_shared
def test_seed_import_keeps_the_studys_splits(imported):
    store, manifests = imported
    for short in ("arc", "squad", "openmath"):
        m = manifests[short, "seed"]
        task = T.get_task(short)
        assert m["task"] == task.name and m["source"] == "seed" and m["schema_version"] == D.SCHEMA_VERSION
        assert m["source_path"] == str(SEED.resolve())
        assert {s: v["rows"] for s, v in m["splits"].items()} == {"train": 1000, "test": 200}
        assert read_manifest(store, "datasets", f"{short}-seed") == m
        for split, info in m["splits"].items():
            df = D.load_split(store, f"{short}-seed", split)
            assert list(df.columns) == list(task.columns) == info["columns"] and len(df) == info["rows"]
            assert df["id"].is_unique and df["id"].map(type).eq(str).all()
            D.validate_columns(task, df)


@needs_shared
def test_arc_numeric_label_rows_are_kept_as_letters(imported):
    store, _ = imported
    for split, expected in (("train", 21), ("test", 6)):
        raw = pd.read_parquet(SEED / f"{split}-ai2_arc.parquet")
        numeric = raw[raw["answer"].isin(["1", "2", "3", "4"])]
        assert len(numeric) == expected
        df = D.load_split(store, "arc-seed", split).set_index("id")
        assert set(df["answer"]) <= set("ABCD")
        for row in numeric.itertuples():
            assert df.loc[row.title, "answer"] == "ABCD"[int(row.answer) - 1]
            assert df.loc[row.title, "question"] == row.question  # the "1. ... 2. ..." options stay as given
    df = D.load_split(store, "arc-seed", "train").set_index("id")
    assert df.loc["NYSEDREGENTS_2005_8_26", "answer"] == "D"


@needs_shared
def test_hf_arc_choices_are_inlined_like_the_seed(imported):
    store, manifests = imported
    assert {s: v["rows"] for s, v in manifests["arc", "hf"]["splits"].items()} == {"train": 1000, "test": 200}
    seed = pd.concat([D.load_split(store, "arc-seed", s) for s in ("train", "test")])
    hf = pd.concat([D.load_split(store, "arc-hf", s) for s in ("train", "test")])
    both = seed.merge(hf, on="id", suffixes=("_seed", "_hf"))
    same = both["question_seed"] == both["question_hf"]
    assert len(both) > 900 and same.sum() >= len(both) - 5
    # the few that differ are items the seed labels 1-4 and the hf copy A-D
    assert both.loc[~same, "question_seed"].str.contains(r" 1\. .* 2\. ").all()
    assert (both["answer_seed"] == both["answer_hf"]).all()


@needs_shared
def test_squad_unanswerable_gold_is_empty(imported):
    store, manifests = imported
    assert (D.load_split(store, "squad-seed", "test")["answer"] == "").sum() == 98
    assert (D.load_split(store, "squad-hf", "train")["answer"] == "").sum() == 334
    assert (D.load_split(store, "squad-hf", "test")["answer"] == "").sum() == 100
    assert D.load_split(store, "squad-hf", "test")["id"].iloc[0] == "57261dab38643c19005ad037"


@needs_shared
def test_hf_openmath_drops_symbolic_answers_and_counts_them(imported):
    store, manifests = imported
    splits = manifests["openmath", "hf"]["splits"]
    assert splits["test"]["rows"] == 200 and splits["test"]["dropped"] == 0 and splits["test"]["drops"] == {}
    assert (splits["train"]["read"], splits["train"]["rows"], splits["train"]["dropped"]) == (800, 638, 162)
    assert splits["train"]["drops"] == {D.NON_NUMERIC_GOLD: 162}
    assert D.drop_summary(splits) == ["train: kept 638 of 800; dropped 162 (non_numeric_gold 162)",
                                      "test: kept 200 of 200; dropped 0"]
    answers = D.load_split(store, "openmath-hf", "train")["answer"]
    assert answers.map(lambda a: parse_number(a) is not None).all()
    assert "0.32653061224489793" in set(answers)  # \frac{16}{49}


@needs_shared
def test_trainer_target_is_exactly_what_the_evaluator_parses(imported):
    store, _ = imported
    for short in ("arc", "squad", "openmath"):
        task = T.get_task(short)
        for source in ("seed", "hf"):
            df = D.load_split(store, f"{short}-{source}", "train")
            sample = pd.concat([df.head(50), df.sample(150, random_state=0)])
            for row in sample.to_dict("records"):
                target = T.format_target(task, row)
                assert T.answer_closed(target)
                assert T.parse_answer(task, target) == T.gold_answer(task, row), (short, source, row["id"])
                T.build_messages(task, row)


@needs_shared
def test_reimport_is_refused_unless_overwrite(imported):
    store, manifests = imported
    with pytest.raises(PreconditionError, match="already exists"):
        D.import_dataset(store, "arc", "seed", SEED, name="arc-seed")
    m = D.import_dataset(store, "arc", "seed", SEED, name="arc-seed", splits=("test",), overwrite=True)
    assert list(m["splits"]) == ["test"]
    assert m["splits"]["test"]["sha256"] == manifests["arc", "seed"]["splits"]["test"]["sha256"]  # deterministic
    with pytest.raises(NotFoundError, match="no split 'train'"):
        D.load_split(store, "arc-seed", "train")


def test_every_drop_kind_is_counted_and_strict_refuses_writing_nothing(tmp_path):
    data = tmp_path / "hf"
    data.mkdir()
    recs = {"train": [{"id": "a", "title": "T", "context": "c1", "question": "q1?",
                       "answers": [{"text": "x", "answer_start": 0}, {"text": "the x", "answer_start": 0}]},
                      {"id": "a", "title": "T", "context": "c2", "question": "q2?", "answers": []},  # duplicate id
                      {"id": "b", "title": "T", "context": "", "question": "q3?", "answers": []},   # no context
                      {"id": "c", "title": "T", "context": "c4", "question": "q4?"},                # no answers
                      {"id": "d", "title": "T", "context": "c5", "question": "q5?", "is_impossible": True,
                       "answers": []}],
            "test": [{"id": "e", "title": "T", "context": "c6", "question": "q6?",
                      "answers": {"text": ["None", "none"], "answer_start": [0, 0]}}]}
    for split, rows in recs.items():
        (data / f"squad-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = LocalStore(tmp_path / "store")
    store.ensure_buckets()
    with pytest.raises(ValidationError) as e:
        D.import_dataset(store, "squad", "hf", data, strict=True)
    assert e.value.problems == ["train: dropped 3 of 5 record(s): duplicate_id 1, missing_field 2"]
    assert all(store.list_keys(b) == [] for b in ("datasets",))
    m = D.import_dataset(store, "squad", "hf", data)
    assert m["splits"]["train"]["drops"] == {D.DUPLICATE_ID: 1, D.MISSING_FIELD: 2}
    train, test = D.load_split(store, "squad", "train"), D.load_split(store, "squad", "test")
    assert [list(a) for a in train["answers"]] == [["x", "the x"], []] and list(train["answer"]) == ["x", ""]
    assert list(test["answers"][0]) == ["None", "none"] and test["answer"][0] == "None"  # a gold, not "no answer"


def test_math_and_mcq_drop_reasons():
    om, arc = T.get_task("openmath"), T.get_task("arc")
    rows, drops = D.convert_records(om, [{"problem": "1+1?", "expected_answer": "2"},
                                         {"problem": "x?", "expected_answer": "\\sqrt{2}"},
                                         {"problem": "", "expected_answer": "3"}, {"problem": "y?"}])
    assert len(rows) == 1 and drops == {D.NON_NUMERIC_GOLD: 1, D.MISSING_FIELD: 2}
    rows, drops = D.convert_records(arc, [{"id": "1", "question": "q", "answer": "B"},
                                          {"id": "2", "question": "q", "answer": "Z"},
                                          {"id": "3", "question": "q"}])
    assert len(rows) == 1 and drops == {D.INVALID_GOLD: 1, D.MISSING_FIELD: 1}


# --- rejected requests write nothing ------------------------------------------------------------

def test_unknown_task_lists_known_tasks(tmp_path):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ValidationError) as e:
        D.import_dataset(store, "mmlu", "seed", tmp_path)
    assert "ai2_arc" in str(e.value) and "squad_v2" in str(e.value) and "OpenMathInstruct-2" in str(e.value)
    assert store.list_keys("datasets") == []


def test_every_request_problem_is_reported_at_once(tmp_path):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ValidationError) as e:
        D.import_dataset(store, "nope", "ftp", None, splits=("train", "Bad Split"), name="a/b")
    text = " | ".join(e.value.problems)
    for needle in ("unknown task 'nope'", "unknown source 'ftp'", "'Bad Split'", "'a/b'"):
        assert needle in text
    with pytest.raises(ValidationError) as e:
        D.import_dataset(store, "openmath", "hub", tmp_path, splits=("train", "dev"), train_size=0)
    text = " | ".join(e.value.problems)
    assert "takes no path" in text and "train_size" in text and "'dev'" in text
    assert store.list_keys("datasets") == []


def test_missing_source_files_are_all_listed(tmp_path):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(NotFoundError) as e:
        D.import_dataset(store, "squad", "seed", tmp_path)
    assert "train-squad_v2.parquet" in str(e.value) and "test-squad_v2.parquet" in str(e.value)
    with pytest.raises(ValidationError, match="not a directory"):
        D.import_dataset(store, "squad", "hf", tmp_path / "missing")
    assert store.list_keys("datasets") == []


def test_load_split_without_manifest_and_validate_columns(tmp_path):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(NotFoundError, match="no manifest"):
        D.load_split(store, "arc", "train")
    with pytest.raises(ValidationError) as e:
        D.validate_columns("squad", pd.DataFrame({"id": [], "question": [], "answer": []}))
    assert "'title'" in str(e.value) and "'context'" in str(e.value)


# --- hub source, with the hub replaced by in-memory records ------------------------------------------

def _fake_math_hub(monkeypatch, n=120):
    rows = [{"problem": f"What is {i} + 1?", "expected_answer": str(i + 1)} for i in range(n)]
    rows += [{"problem": f"Simplify sqrt({i})", "expected_answer": f"\\sqrt{{{i}}}"} for i in range(2, 30)]
    calls = []

    def load(task, hub_split):
        calls.append((task.hub_id, hub_split))
        return list(rows)

    monkeypatch.setattr(D, "_load_hub_split", load)
    return calls


def test_hub_sampling_is_seeded_disjoint_and_sized(tmp_path, monkeypatch):
    calls = _fake_math_hub(monkeypatch)
    store = LocalStore(tmp_path / "store")
    m1 = D.import_dataset(store, "openmath", "hub", train_size=30, test_size=10, seed=7, name="om1")
    m2 = D.import_dataset(store, "openmath", "hub", train_size=30, test_size=10, seed=7, name="om2")
    m3 = D.import_dataset(store, "openmath", "hub", train_size=50, test_size=10, seed=8, name="om3")
    assert calls[0] == ("nvidia/OpenMathInstruct-2", "train_1M")
    assert m1["source"] == "hub" and m1["source_id"] == "nvidia/OpenMathInstruct-2" and m1["seed"] == 7
    assert {s: v["rows"] for s, v in m1["splits"].items()} == {"train": 30, "test": 10}
    assert m1["splits"]["train"]["sha256"] == m2["splits"]["train"]["sha256"]  # reproducible
    assert m1["splits"]["test"]["sha256"] != m3["splits"]["test"]["sha256"]   # another seed, another sample
    train, test = D.load_split(store, "om1", "train"), D.load_split(store, "om1", "test")
    assert not set(train["question"]) & set(test["question"])  # one hub split feeds both, disjointly
    assert train["answer"].map(lambda a: parse_number(a) is not None).all()


def test_hub_test_split_does_not_depend_on_train_size(tmp_path, monkeypatch):
    _fake_math_hub(monkeypatch)
    store = LocalStore(tmp_path / "store")
    a = D.import_dataset(store, "openmath", "hub", train_size=20, test_size=10, name="a")
    b = D.import_dataset(store, "openmath", "hub", train_size=60, test_size=10, name="b")
    assert a["splits"]["test"]["sha256"] == b["splits"]["test"]["sha256"]


def test_hub_squad_schema(tmp_path, monkeypatch):
    recs = [{"id": f"q{i}", "title": "T", "context": f"ctx {i}", "question": f"q {i}?",
             "answers": {"text": [f"a{i}"] if i % 2 else [], "answer_start": [0] if i % 2 else []}}
            for i in range(40)]
    monkeypatch.setattr(D, "_load_hub_split", lambda task, split: recs)
    store = LocalStore(tmp_path / "store")
    m = D.import_dataset(store, "squad", "hub", train_size=10, test_size=5, splits=("test",))
    assert m["hub_splits"] == {"test": "validation"} and m["splits"]["test"]["rows"] == 5
    df = D.load_split(store, "squad", "test")
    assert all((a == "") == (int(i[1:]) % 2 == 0) for i, a in zip(df["id"], df["answer"]))
    assert all(list(g) == ([a] if a else []) for a, g in zip(df["answer"], df["answers"]))


# --- a new task from YAML only, imported end to end -------------------------------------------------

def test_new_mcq_task_yaml_imports_from_hf_folder(tmp_path):
    tasks_dir, data_dir = tmp_path / "tasks", tmp_path / "data"
    tasks_dir.mkdir()
    data_dir.mkdir()
    (tasks_dir / "quiz.yaml").write_text(textwrap.dedent(r"""
        name: quiz
        short: quiz
        type: mcq4
        title: Quiz (4-way MCQ)
        system_prompt: Output only the option letter inside \boxed{}.
        user_template: "{question}"
        hf_stem: quiz
        fields: {question: stem, answerKey: label_index}
    """))
    for split, n in (("train", 8), ("test", 4)):  # an MMLU-like layout: plain choice list, 0-based gold
        with open(data_dir / f"quiz-{split}.jsonl", "w") as fh:
            for i in range(n):
                fh.write(json.dumps({"stem": f"{split} question {i}?", "choices": ["w", "x", "y", "z"],
                                     "label_index": i % 4}) + "\n")
    saved = os.environ.get("FTLAB_TASK_DIRS")
    os.environ["FTLAB_TASK_DIRS"] = str(tasks_dir)
    try:
        T.reload_tasks()
        store = LocalStore(tmp_path / "store")
        m = D.import_dataset(store, "quiz", "hf", data_dir)
        assert {s: v["rows"] for s, v in m["splits"].items()} == {"train": 8, "test": 4}
        df = D.load_split(store, "quiz", "train")
        assert df["question"].iloc[1] == "train question 1? A. w B. x C. y D. z"
        assert list(df["answer"].iloc[:4]) == ["A", "B", "C", "D"]
        assert df["id"].str.startswith("quiz-").all()
        assert T.parse_answer("quiz", T.format_target("quiz", df.iloc[1])) == "B"
    finally:
        if saved is None:
            os.environ.pop("FTLAB_TASK_DIRS", None)
        else:
            os.environ["FTLAB_TASK_DIRS"] = saved
        T.reload_tasks()


def test_hub_sampling_with_real_datasets_objects(tmp_path, monkeypatch):
    """The hub path with the objects load_dataset returns: map-style and streamed (IterableDataset)."""
    datasets = pytest.importorskip("datasets")
    rows = [{"problem": f"What is {i} * 2?", "expected_answer": str(2 * i)} for i in range(200)]
    store = LocalStore(tmp_path / "store")
    for kind, make in (("map", lambda: datasets.Dataset.from_list(rows)),
                       ("stream", lambda: datasets.Dataset.from_list(rows).to_iterable_dataset(num_shards=4))):
        monkeypatch.setattr(D, "_load_hub_split", lambda task, split: make())
        a = D.import_dataset(store, "openmath", "hub", train_size=20, test_size=5, seed=3, name=f"{kind}-a")
        b = D.import_dataset(store, "openmath", "hub", train_size=20, test_size=5, seed=3, name=f"{kind}-b")
        assert {s: v["rows"] for s, v in a["splits"].items()} == {"train": 20, "test": 5}
        assert a["splits"]["train"]["sha256"] == b["splits"]["train"]["sha256"], kind
