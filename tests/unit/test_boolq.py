"""BoolQ, the yes/no task: imported from HF-schema records (question, passage, answer: bool), its
prompt and training target, the parser, and the scorer on a small set written here."""
from __future__ import annotations

import json

import pytest

from services.common.data import tasks as T
from services.common.data.task_types import boolq
from services.common.data.importing import import_dataset, load_split

ITEMS = [  # HF schema of google/boolq
    {"question": "is the sun a star", "passage": "The Sun is the star at the center of the Solar System.", "answer": True},
    {"question": "are whales fish", "passage": "Whales are marine mammals.", "answer": False},
    {"question": "is paris in france", "passage": "Paris is the capital of France.", "answer": True},
    {"question": "", "passage": "An item without a question is dropped.", "answer": True},
]


def test_hf_import_prompt_target_and_parse(store, tmp_path):
    for split in ("train", "test"):
        (tmp_path / f"boolq-{split}.jsonl").write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n")
    manifest = import_dataset(store, "boolq", "hf", tmp_path)
    assert manifest["splits"]["test"]["rows"] == 3 and manifest["splits"]["test"]["dropped"] == 1
    df = load_split(store, "boolq", "test")
    assert list(df.columns) == ["id", "context", "question", "answer"] and list(df.answer) == ["True", "False", "True"]
    row = df.iloc[1]
    msgs = T.build_messages("boolq", row)
    assert "Whales are marine mammals." in msgs[1]["content"] and "are whales fish" in msgs[1]["content"]
    assert "False" not in msgs[1]["content"]
    assert T.format_target("boolq", row) == "\\boxed{False}"
    assert T.parse_answer("boolq", T.format_target("boolq", row)) == T.gold_answer("boolq", row) == "False"


@pytest.mark.parametrize("text,want", [("\\boxed{True}", "True"), ("\\boxed{yes.}", "True"), ("\\boxed{\\text{No}}", "False"),
                                       ("\\boxed{false}", "False"), ("\\boxed{maybe}", None), ("True", None)])
def test_parser(text, want):
    assert T.parse_answer("boolq", text) == want


def test_scores_by_hand():
    golds = ["True", "False", "True", "False", "True"]
    preds = ["True", "True", None, "False", "True"]
    r = boolq.score_boolq(preds, golds)
    # TP 2 (items 0, 4), FP 1 (item 1), FN 1 (item 2: no answer on a True gold), TN 1
    assert r["confusion_matrix"] == {"TP": 2, "TN": 1, "FP": 1, "FN": 1}
    assert r["accuracy"] == 60.0 and r["format_success_rate"] == 80.0
    assert r["f1_pos"] == pytest.approx(0.6667, abs=1e-4) and r["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2, abs=1e-4)
    assert r["MCC"] == pytest.approx((2 * 1 - 1 * 1) / (3 * 3 * 2 * 2) ** 0.5, abs=1e-4)
