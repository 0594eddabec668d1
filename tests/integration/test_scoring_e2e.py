"""Both scoring profiles end to end: the real evaluator (gRPC on loopback, the tiny Qwen3) on a
multi-gold SQuAD v2 set and a yes/no set written in canonical form, then ``ftlab score --eval``
through the installed console script re-scores the stored predictions to exactly the stored
numbers under each profile, and the aggregation gives the ``__study`` columns after the study's."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.common.storage import artifacts
from services.common.storage.artifacts import sha256_file
from services.common.data.tasks import get_task
from tests.conftest import TINY

FTLAB = str(Path(sys.executable).parent / "ftlab")
SQUAD = [  # id, context, question, answers (all golds; [] unanswerable)
    ("s1", "The Denver Broncos won Super Bowl 50.", "Who won Super Bowl 50?",
     ["Denver Broncos", "the Denver Broncos", "Broncos"]),
    ("s2", "The Denver Broncos won Super Bowl 50.", "Who lost Super Bowl 12?", []),
    ("s3", "The answer was literally None.", "What was the answer?", ["None"]),
    ("s4", "Paris is in France.", "What is the capital of Peru?", []),
]
YESNO = [("b1", "Water boils at 100 C at sea level.", "does water boil at 100 c at sea level", "True"),
         ("b2", "Cats are mammals.", "are cats reptiles", "False"),
         ("b3", "The sun is a star.", "is the sun a star", "True")]


def write_dataset(store, name: str, task: str, table: pa.Table, split: str = "test") -> None:
    """Commit a dataset in canonical form directly (as data import would), manifest last."""
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(table, Path(tmp, f"{split}.parquet"))
        artifacts.commit_dir(store, "datasets", name, tmp, {
            "name": name, "task": get_task(task).name, "task_type": get_task(task).type.name, "source": "test",
            "splits": {split: {"rows": table.num_rows, "sha256": sha256_file(Path(tmp, f"{split}.parquet")),
                               "columns": table.column_names}}, "schema_version": 1})


def _score(store, *args) -> dict:
    env = {**os.environ, "FTLAB_STORAGE": "local", "FTLAB_LOCAL_ROOT": str(store.root)}
    out = subprocess.run([FTLAB, "score", *args], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


KEYS = ("type", "total_samples", "format_success_rate", "correct", "incorrect", "accuracy", "metrics")


@pytest.mark.slow
def test_both_profiles_stored_rescored_and_aggregated(store, tiny_model_dir, monkeypatch):
    from flows.aggregate import STUDY_COLUMNS, summary_table
    from services.common.torch_utils import modeling
    from services.common.rpc.clients import ServiceClient
    from services.common.jobs.runtime import RuntimeOptions
    from services.common.rpc.service import RunningService
    from services.evaluator.server import SERVICE as EVALUATOR

    monkeypatch.setenv("FTLAB_CPU_THREADS", "1")
    modeling.commit_base_model(store, TINY, tiny_model_dir, {"source": "tiny-random-qwen3", "seed": 0})
    cols = list(zip(*SQUAD))
    write_dataset(store, "squad", "squad", pa.table({
        "id": list(cols[0]), "title": ["t"] * len(SQUAD), "context": list(cols[1]), "question": list(cols[2]),
        "answer": [a[0] if a else "" for a in cols[3]], "answers": pa.array(list(cols[3]), pa.list_(pa.string()))}))
    cols = list(zip(*YESNO))
    write_dataset(store, "boolq", "boolq", pa.table({"id": list(cols[0]), "context": list(cols[1]),
                                                      "question": list(cols[2]), "answer": list(cols[3])}))
    svc = RunningService(EVALUATOR, store, "127.0.0.1:0", RuntimeOptions(cancel_grace_s=2.0))
    client = ServiceClient("evaluator", svc.address)
    try:
        client.run({"model": TINY, "tasks": [{"task": "squad"}, {"task": "boolq"}], "eval_id": "e2e",
                    "batch_size": 4, "max_new_tokens": 4, "bootstrap_samples": 100}, "score-e2e", timeout_s=300)
    finally:
        client.close()
        svc.stop(grace_s=2.0)

    metrics = json.loads(store.get_bytes("evaluations", f"{TINY}/e2e/metrics.json"))
    preds = pd.read_parquet(io.BytesIO(store.get_bytes("evaluations", f"{TINY}/e2e/predictions.parquet")))
    squad = preds[preds.task == "squad_v2"]
    assert [list(g) for g in squad.golds] == [list(a) for *_, a in SQUAD]  # every gold, in dataset order
    assert list(squad.gold) == ["Denver Broncos", "", "None", ""]  # the first; "None" stays an answer
    prof = metrics["study_profile"]
    assert prof["profile"] == "study" and set(prof["datasets"]) == {"squad_v2", "boolq"}
    assert prof["summary"]["total_samples"] == 7 and "per_prompt" in prof["datasets"]["boolq"]["latency_seconds"]

    # The random model writes no \boxed{}: ftlab calls that a format failure everywhere, the study
    # an abstention: EM on the truly unanswerable s2, s4, and NoAns 100 over s2, s3, s4 (its gold
    # "None" is empty-like to the study).
    ours, theirs = metrics["datasets"]["squad_v2"], prof["datasets"]["squad_v2"]
    assert ours["metrics"]["EM"] == 0.0 and ours["format_success_rate"] == 0.0
    assert theirs["metrics"]["NoAns_Accuracy"] == 100.0 and theirs["metrics"]["EM"] == 50.0
    assert theirs["metrics"]["HasAns_EM"] == 0.0 and ours["metrics"]["NoAns_Accuracy"] == 0.0

    # ftlab score --eval reproduces the stored numbers of each profile from the stored outputs.
    for task, name in (("squad", "squad_v2"), ("boolq", "boolq")):
        got = _score(store, "--task", task, "--eval", f"{TINY}/e2e", "--bootstrap-samples", "100")
        assert {k: got[k] for k in KEYS} == {k: metrics["datasets"][name][k] for k in KEYS}
        got = _score(store, "--task", task, "--eval", f"{TINY}/e2e", "--profile", "study")
        assert {k: got[k] for k in KEYS} == {k: prof["datasets"][name][k] for k in KEYS}
        assert len(got["items"]) == len(preds[preds.task == name])

    # compare pairs SQuAD on every gold and knows the yes/no type
    from services.evaluator.compare import compare
    cmp = compare(store, f"{TINY}/e2e", f"{TINY}/e2e", n_resamples=100)
    assert cmp["tasks"]["boolq"]["metrics"]["MCC"]["diff"] == 0.0
    assert cmp["tasks"]["squad_v2"]["metrics"]["F1"]["a"] == ours["metrics"]["F1"]

    # The aggregation of this evaluation: the study's columns, then the __study ones.
    table = summary_table(store, [(TINY, "e2e")])
    study_cols = [c for c in table.columns if c.endswith("__study")]
    assert list(table.columns[:len(STUDY_COLUMNS)]) == STUDY_COLUMNS
    assert list(table.columns[len(STUDY_COLUMNS):len(STUDY_COLUMNS) + len(study_cols)]) == study_cols
    assert {"squad_v2__F1__study", "squad_v2__EM__study", "boolq__MCC__study", "boolq__accuracy__study"} <= set(study_cols)
    assert table.loc[0, "squad_v2__EM__study"] == 50.0 and table.loc[0, "squad_v2__EM"] == 0.0
    assert table.loc[0, "boolq__MCC"] == metrics["datasets"]["boolq"]["metrics"]["MCC"]
