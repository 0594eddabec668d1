"""The MLflow UI in a real browser: LoRA, DoRA and full fine-tuning of the tiny Qwen3 through the
real trainer, tracked into a real ``mlflow server``; Debian's headless chromium (driven over the
DevTools protocol) opens the experiment's run comparison, which must show the three runs by their
study names with their PEFT methods, then their loss curves overlaid (step as the x-axis), and
saves a screenshot of those (``FTLAB_UI_SCREENSHOT=path.png`` keeps a copy: docs/img/ holds one
that a person looked at). CI installs chromium (.ci/run); without it the test is skipped."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from services.common.rpc.clients import state_name
from tests.conftest import TINY
from tests.integration.test_tracking import Tracked, _runs
from tests.mlflow_server import MlflowServer

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SPEC = {"base_model": TINY, "dataset": "arc", "max_steps": 4, "train_limit": 16, "per_device_batch_size": 4,
        "gradient_accumulation_steps": 1, "max_seq_length": 256}
METHODS = {"lora": "Qwen3-tiny-arc_SFT_LoRa8_NoQuant", "dora": "Qwen3-tiny-arc_SFT_DoRa8_NoQuant",
           "none": "Qwen3-tiny-arc_SFT_NoPeft_NoQuant"}
# MLflow 3's UI opens its "Assistant" side panel on a first visit to a local server (it would cover a
# third of the screenshot); a user closes it once and the UI remembers that in localStorage
CLOSED_ASSISTANT = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true", "mlflow.assistant.panelOpen_v1": "false"}


class Browser:
    """Headless chromium driven over the DevTools protocol (Prefect's ``websockets`` client): pages
    are read once they show what is asked for, not after a fixed wait."""

    def __init__(self, profile, width: int = 1600, height: int = 1000):
        import re
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--window-size={width},{height}",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            if (m := re.search(r"DevTools listening on ws://([^/]+)/", line)):
                break
        else:
            raise RuntimeError(f"chromium exited ({self.proc.wait()}) without a DevTools endpoint")
        with urllib.request.urlopen(f"http://{m.group(1)}/json/list", timeout=30) as r:
            page = next(p for p in json.load(r) if p["type"] == "page")
        from websockets.sync.client import connect
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=60)
        self.n = 0
        self.call("Page.enable")
        script = "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in CLOSED_ASSISTANT.items())
        self.call("Page.addScriptToEvaluateOnNewDocument", source=script)

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=180))
            if msg.get("id") == self.n:
                assert "error" not in msg, msg["error"]
                return msg.get("result", {})

    def text(self) -> str:
        return self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                         returnByValue=True)["result"].get("value") or ""

    def open(self, url: str, *expect: str, timeout_s: float = 180.0) -> str:
        """Go to ``url``; the page's text once every string in ``expect`` is on it (and drawn)."""
        self.call("Page.navigate", url=url)
        deadline = time.time() + timeout_s
        while not all(e in (text := self.text()) for e in expect):
            assert time.time() < deadline, f"{url}: never showed {expect}; shows: {text[-1500:]}"
            time.sleep(1.0)
        time.sleep(3.0)  # charts animate in
        return text

    def screenshot(self, path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.ws.close()
        self.proc.kill()
        self.proc.wait()


def _q(value) -> str:
    return urllib.parse.quote(json.dumps(value))


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium; .ci/run does)")
def test_the_mlflow_ui_compares_lora_dora_and_full_runs(tmp_path, seeded_store, monkeypatch):
    srv = MlflowServer(tmp_path / "mlflow").start()
    browser = None
    try:
        # the three jobs at once (each one's cost is mostly its child process starting), tracked
        # side by side, and the browser starting meanwhile
        svc = Tracked(seeded_store, srv.uri, monkeypatch, names=("trainer",), max_running=len(METHODS))
        try:
            trainer = svc.clients["trainer"]
            jobs = [trainer.submit(SPEC | {"peft_method": m} | ({} if m == "none" else {"lora": {"r": 8}}),
                                   f"compare:train:{m}") for m in METHODS]
            browser = Browser(tmp_path / "profile")
            for job in jobs:
                final = trainer.wait(job.job_id, 300)
                assert state_name(final.state) == "SUCCEEDED", final.error
        finally:
            svc.stop()
        runs = _runs(MlflowClient(srv.uri), "compare")
        assert set(METHODS.values()) <= set(runs), sorted(runs)
        ids = [runs[name].info.run_id for name in METHODS.values()]
        exp = [runs[METHODS["lora"]].info.experiment_id]
        # the run comparison: the three runs by their study names, the PEFT method of each
        text = browser.open(f"{srv.uri}/#/compare-runs?runs={_q(ids)}&experiments={_q(exp)}",
                            "Comparing 3 Runs", *METHODS.values())
        assert all(m in text.split() for m in METHODS), text[-3000:]  # peft_method, in the params table
        # the loss curves of the three overlaid, optimizer step as the x-axis: the screenshot
        text = browser.open(f"{srv.uri}/#/metric/loss?runs={_q(ids)}&metric={_q('loss')}&experiments={_q(exp)}"
                            f"&plot_metric_keys={_q(['loss'])}&x_axis=step", "Completed Runs", "3/3",
                            *METHODS.values())
        panel = browser.call("Runtime.evaluate", expression="localStorage.getItem('mlflow.assistant.panelOpen_v1')",
                             returnByValue=True)["result"].get("value")
        assert panel == "false"  # the Assistant side panel stayed closed: the chart has the width
        png = tmp_path / "loss.png"
        browser.screenshot(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000  # a page, not a blank
        if os.environ.get("FTLAB_UI_SCREENSHOT"):
            shutil.copy(png, os.environ["FTLAB_UI_SCREENSHOT"])
    finally:
        if browser is not None:
            browser.close()
        srv.stop()
