"""The MLflow UI in a real browser: LoRA, DoRA and full fine-tuning of the tiny Qwen3 through the
real trainer, tracked into a real ``mlflow server``; Debian's headless chromium opens the
experiment's run comparison and must show the three runs by their study names with their PEFT
methods, and saves a screenshot (``FTLAB_UI_SCREENSHOT=path.png`` keeps a copy: docs/img/ holds one
that a person looked at). CI installs chromium (.ci/run); without it the test is skipped."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse

import pytest

from services.common.rpc.clients import state_name
from tests.conftest import TINY
from tests.integration.test_tracking import Tracked, _runs
from tests.mlflow_server import MlflowServer

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1600,1300",
         "--virtual-time-budget=20000"]
SPEC = {"base_model": TINY, "dataset": "arc", "max_steps": 4, "train_limit": 16, "per_device_batch_size": 4,
        "gradient_accumulation_steps": 1, "max_seq_length": 256}
METHODS = {"lora": "Qwen3-tiny-arc_SFT_LoRa8_NoQuant", "dora": "Qwen3-tiny-arc_SFT_DoRa8_NoQuant",
           "none": "Qwen3-tiny-arc_SFT_NoPeft_NoQuant"}


def _chromium(url: str, profile, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium; .ci/run does)")
def test_the_mlflow_ui_compares_lora_dora_and_full_runs(tmp_path, seeded_store, monkeypatch):
    srv = MlflowServer(tmp_path / "mlflow").start()
    try:
        svc = Tracked(seeded_store, srv.uri, monkeypatch, names=("trainer",))
        try:
            for method in METHODS:
                spec = SPEC | {"peft_method": method} | ({} if method == "none" else {"lora": {"r": 8}})
                job = svc.clients["trainer"].run(spec, f"compare:train:{method}", timeout_s=300)
                assert state_name(job.state) == "SUCCEEDED", job.error
        finally:
            svc.stop()
        runs = _runs(MlflowClient(srv.uri), "compare")
        assert set(METHODS.values()) <= set(runs), sorted(runs)
        ids = [runs[name].info.run_id for name in METHODS.values()]
        exp_id = runs[METHODS["lora"]].info.experiment_id
        url = (f"{srv.uri}/#/compare-runs?runs={urllib.parse.quote(json.dumps(ids))}"
               f"&experiments={urllib.parse.quote(json.dumps([exp_id]))}")

        dom = _chromium(url, tmp_path / "profile-dom", "--dump-dom").stdout
        assert "Comparing 3 Runs" in dom, dom[-2000:]
        for name in METHODS.values():  # the study's names, as run names
            assert name in dom
        assert all(f">{m}<" in dom for m in METHODS)  # peft_method of each, in the params table

        png = tmp_path / "compare.png"
        _chromium(url, tmp_path / "profile-png", f"--screenshot={png}")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000  # a page, not a blank
        if os.environ.get("FTLAB_UI_SCREENSHOT"):
            shutil.copy(png, os.environ["FTLAB_UI_SCREENSHOT"])
    finally:
        srv.stop()
