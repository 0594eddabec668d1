"""``ftlab data leakage`` at the door: bad options, missing or unreadable files and a file of another
task are one clear message (exit 2) listing every problem, never a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import SEED_DATA

FTLAB = str(Path(sys.executable).parent / "ftlab")


def _leakage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FTLAB, "data", "leakage", *args], capture_output=True, text=True, timeout=120)


def test_bad_options_and_missing_files_all_at_once(tmp_path):
    out = _leakage("--task", "arcx", "--ngram", "0", "--threshold", "7", "--examples", "-1",
                   str(tmp_path / "no.jsonl"), str(tmp_path / "nope"))
    assert out.returncode == 2 and "Traceback" not in out.stderr and not out.stdout
    for fragment in ("--task: unknown task 'arcx'", "TRAIN: no file or folder", "TEST: no file or folder",
                     "--threshold: 7.0 must be in (0, 1]", "--ngram: 0 must be >= 1", "--examples: -1 must be >= 0"):
        assert fragment in out.stderr, (fragment, out.stderr)


def test_unreadable_file_and_file_of_another_task(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.write_text("not json\n")
    squad = str(SEED_DATA / "test-squad_v2.parquet")
    out = _leakage("--task", "arc", squad, str(garbage))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "no ai2_arc rows in" in out.stderr and "is it a ai2_arc file?" in out.stderr
    assert f"{garbage}: cannot read it as" in out.stderr
    ok = _leakage("--task", "arc", str(SEED_DATA / "train-ai2_arc.parquet"), str(SEED_DATA / "test-ai2_arc.parquet"))
    assert ok.returncode == 0 and '"exact": 0' in ok.stdout
