"""The committed stubs are exactly what `make proto` generates from proto/."""
from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_fresh(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.generate(tmp_path / "generated")
    committed = ROOT / "services" / "common" / "generated"
    fresh = sorted(p.relative_to(tmp_path / "generated") for p in (tmp_path / "generated").rglob("*") if p.is_file())
    current = sorted(p.relative_to(committed) for p in committed.rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts)
    assert fresh == current, "stub files differ: run `make proto` and commit"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / "generated" / p, committed / p, shallow=False)]
    assert not stale, f"stale stubs {stale}: run `make proto` and commit"
