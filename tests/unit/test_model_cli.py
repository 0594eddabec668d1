"""``ftlab model import --gguf`` / ``model make-tiny`` with a wrong file: one clear message (exit 2),
never a transformers traceback, nothing written."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FTLAB = str(Path(sys.executable).parent / "ftlab")


def _ftlab(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FTLAB_STORAGE": "local", "FTLAB_LOCAL_ROOT": str(tmp_path / "storage"),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([FTLAB, *args], capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)


def test_not_a_gguf_and_not_a_tokenizer_are_clear_refusals(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("hello, not a model\n")
    out = _ftlab(tmp_path, "model", "import", "--gguf", str(fake), "--name", "fake")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "not a GGUF file" in out.stderr
    out = _ftlab(tmp_path, "model", "make-tiny", "--tokenizer", str(tmp_path / "nope"), "--name", "t")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "--tokenizer" in out.stderr and "cannot load a tokenizer" in out.stderr
    assert not list((tmp_path / "storage").glob("models/*"))
