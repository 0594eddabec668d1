"""``ftlab score`` through its installed console script: JSON Lines in, one JSON object out, in
both profiles; bad input names every bad line and prints nothing on stdout."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FTLAB = str(Path(sys.executable).parent / "ftlab")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FTLAB, "score", *args], capture_output=True, text=True, timeout=120)


def _jsonl(tmp_path: Path, items: list[dict], name: str = "out.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    return str(path)


@pytest.mark.parametrize("profile", ["ftlab", "study"])
def test_squad_jsonl_both_profiles(tmp_path, profile):
    f = _jsonl(tmp_path, [
        {"id": "q1", "output": "So: \\boxed{Broncos}", "gold": ["Denver Broncos", "the Denver Broncos", "Broncos"]},
        {"id": "q2", "output": "\\boxed{unanswerable}", "gold": []},
        {"id": "q3", "output": "no box at all", "gold": ""},
        {"id": "q4", "output": "\\boxed{Paris}", "gold": "Paris"},
    ])
    out = _run("--task", "squad_v2", "--profile", profile, f)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["task"] == "squad_v2" and r["profile"] == profile and r["total_samples"] == 4
    assert {"accuracy", "format_success_rate", "correct", "incorrect", "metrics", "items"} <= set(r)
    assert {"EM", "F1", "HasAns_EM", "HasAns_F1", "NoAns_Accuracy", "AvNA_Accuracy"} <= set(r["metrics"])
    items = {i["id"]: i for i in r["items"]}
    assert items["q3"]["parsed"] is None and items["q4"]["correct"] is True
    if profile == "ftlab":  # all golds; \boxed{unanswerable} abstains; no box is a format failure
        assert [i["correct"] for i in r["items"]] == [True, True, False, True]
        assert r["metrics"]["EM"] == 75.0 and "ci95" in r["metrics"]
    else:  # first gold only; "unanswerable" != "" for EM; no box abstains
        assert [i["correct"] for i in r["items"]] == [False, False, True, True]
        assert r["metrics"]["EM"] == 50.0 and r["metrics"]["NoAns_Accuracy"] == 100.0


def test_arc_and_math_and_yes_no_jsonl(tmp_path):
    arc = _jsonl(tmp_path, [{"id": 1, "output": "\\boxed{B}", "gold": "B"},
                            {"id": 2, "output": "\\boxed{(C)}", "gold": "3"}], "arc.jsonl")
    r = json.loads(_run("--task", "arc", arc).stdout)
    assert r["accuracy"] == 100.0 and [i["parsed"] for i in r["items"]] == ["B", "C"]
    assert r["metrics"]["macro_f1"] == 0.5  # 2 of ARC's 4 labels (A-D) are perfect, 2 absent
    math = _jsonl(tmp_path, [{"id": "m", "output": "\\boxed{1,234}", "gold": 1234}], "m.jsonl")
    assert json.loads(_run("--task", "openmath", math).stdout)["accuracy"] == 100.0
    assert json.loads(_run("--task", "openmath", "--profile", "study", math).stdout)["accuracy"] == 0.0
    yn = _jsonl(tmp_path, [{"id": "y", "output": "\\boxed{True}", "gold": True},
                           {"id": "n", "output": "\\boxed{yes}", "gold": "no"}], "y.jsonl")
    r = json.loads(_run("--task", "boolq", yn).stdout)
    assert r["accuracy"] == 50.0 and r["metrics"]["confusion_matrix"] == {"TP": 1, "TN": 0, "FP": 1, "FN": 0}


def test_bad_input_names_every_problem_and_prints_nothing(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"id": 1, "output": "\\\\boxed{A}", "gold": "A"}\nnot json\n{"id": 3, "gold": "A"}\n'
                 '{"id": 4, "output": "x", "gold": "Q"}\n')
    out = _run("--task", "arc", str(f))
    assert out.returncode == 2 and out.stdout == ""
    assert f"{f}:2: not JSON" in out.stderr and f"{f}:3: missing 'output'" in out.stderr
    assert f"{f}:4: gold must be one of ['A', 'B', 'C', 'D'] or 1-4, got 'Q'" in out.stderr
    out = _run("--task", "nope", str(f))
    assert out.returncode == 2 and "unknown task 'nope'" in out.stderr
    assert _run("--task", "arc").returncode == 2  # neither FILE nor --eval
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"id": 1, "output": "caf\u00e9", "gold": "A"}\n'.encode("latin-1"))
    out = _run("--task", "arc", str(latin1))
    assert out.returncode == 2 and f"{latin1}: cannot read" in out.stderr and "Traceback" not in out.stderr


def test_reader_closing_the_pipe_is_not_a_traceback(tmp_path):
    # `ftlab score --task ai2_arc out.jsonl | head -30` printed a BrokenPipeError traceback
    f = _jsonl(tmp_path, [{"id": "q1", "output": "\\boxed{B}", "gold": "B"}])
    proc = subprocess.Popen([FTLAB, "score", "--task", "ai2_arc", f], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the JSON is written
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_help_shows_the_cli_defaults():
    out = subprocess.run([FTLAB, "train", "--help"], capture_output=True, text=True, timeout=60).stdout
    from services.trainer.peft import PEFT_METHODS  # every registered method is a choice
    assert f"--peft {{{','.join(PEFT_METHODS)}}}" in out and "(default: lora)" in out
    out = subprocess.run([FTLAB, "data", "leakage", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "(default: 3)" in out and "(default: 0.8)" in out
