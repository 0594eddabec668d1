"""bench/gpu_bench.sh's CPU dry run: the GPU bench's whole path (random Qwen3-8B/4B architectures
at tiny shapes from bench/gpu_configs, our build_model, LoRA r256 / QLoRA / full FT steps, memory
estimate, MFU, generation) runs and reports every row. Numbers are not checked: speed and memory
belong to benchmarks, and on a GPU host the script itself is the measurement."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_configs_are_the_public_qwen3_shapes():
    from services.trainer.memory import catalogue
    for name, size in (("qwen3-8b.json", "8B"), ("qwen3-4b.json", "4B")):
        cfg = json.loads((ROOT / "bench" / "gpu_configs" / name).read_text())
        assert {k: cfg[k] for k in catalogue()[size]} == catalogue()[size]


@pytest.mark.slow
def test_gpu_bench_dry_run_reports_every_case(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable, "FTLAB_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", "bench/gpu_bench.sh", "--dry-run", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert sorted(r["case"] for r in res["train"]) == ["Qwen3-4B full FT", "Qwen3-8B LoRA r256", "Qwen3-8B QLoRA r256"]
    for r in res["train"]:
        assert r["tokens_per_s"] > 0 and r["allocated_gb"] > 0 and r["estimate_gb"] > 0 and r["mfu"] > 0
        assert r["final_loss"] == r["final_loss"]  # not NaN
    assert res["eval"]["items_per_s"] > 0
    assert "| Qwen3-8B QLoRA r256 |" in proc.stdout and "items/s" in proc.stdout
