"""Helpers for the hardening tests (security, faults, load): a torch-free quantizer-shaped service
— the real QuantizerServicer and validation, with a recipe that uploads a small artifact through
the real commit path — runnable in-process or as its own process (``python -m tests.hardening``).

The recipe is steered through files in ``$HARDEN_CTL_DIR`` (the child inherits the environment):
``steps``/``sleep`` (how long it runs), ``hold`` + ``go`` (wait before uploading),
``hold_upload`` + ``go_upload`` (wait after the first of three files). Every start leaves a
``run-<job>-<attempt>-<pid>`` file, so tests can count how often a job really ran.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from services.common.storage import artifacts
from services.common.storage.store import make_uri

CTL_ENV = "HARDEN_CTL_DIR"
SOURCE = "src-model"
ROOT = Path(__file__).resolve().parents[1]


def _ctl(name: str, default: str = "") -> str:
    ctl = os.environ.get(CTL_ENV)
    p = Path(ctl) / name if ctl else None
    return p.read_text().strip() if p and p.exists() else default


def _wait_for(name: str, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while not Path(os.environ[CTL_ENV], name).exists():
        if time.time() > deadline:
            raise TimeoutError(f"control file {name} never appeared")
        time.sleep(0.05)


def quantize_like(ctx, cfg, with_config: bool = False):
    """Quantizer-shaped and torch-free: some steps, then a 3-file artifact committed manifest-last
    (``with_config``: plus a config.json, so the evaluator's door takes it for a model)."""
    if os.environ.get(CTL_ENV):
        Path(os.environ[CTL_ENV], f"run-{ctx.job_id}-{ctx.attempt}-{os.getpid()}").touch()
    ctx.log(f"attempt {ctx.attempt}: quantizing {cfg['source_model']} from the start")
    steps, sleep = int(_ctl("steps", "3")), float(_ctl("sleep", "0.01"))
    for i in range(steps):
        ctx.progress(i + 1, steps, {"step_loss": 1.0 / (i + 1)})
        time.sleep(sleep)
    if _ctl("hold", "no") != "no":
        _wait_for("go")
    out = Path(ctx.workdir) / "out"
    out.mkdir()
    for i in range(3):
        (out / f"part-{i}.bin").write_bytes(os.urandom(32 * 1024))
    if with_config:
        (out / "config.json").write_text('{"model_type": "qwen3"}')

    def on_file(done, total):
        ctx.log(f"uploaded {done}/{total}")
        if done == 1 and _ctl("hold_upload", "no") != "no":
            Path(os.environ[CTL_ENV], "uploaded-1").touch()
            _wait_for("go_upload")
    artifacts.commit_dir(ctx.store, "models", cfg["output_name"], out,
                         {"kind": "quantized", "parents": [cfg["source_model"]]}, on_file=on_file)
    return {"outputs": {"model": make_uri("models", cfg["output_name"] + "/")}, "metrics": {"files": 3}}


def service_def():
    from services.quantizer.server import SERVICE
    return replace(SERVICE, recipes={"quantize": "tests.hardening:quantize_like"})


def quantize_model_like(ctx, cfg):
    return quantize_like(ctx, cfg, with_config=True)


def model_service_def():
    """The light quantizer whose outputs look like models (a config.json) to the evaluator's door."""
    from services.quantizer.server import SERVICE
    return replace(SERVICE, recipes={"quantize": "tests.hardening:quantize_model_like"})


def evaluate_like(ctx, cfg):
    """Evaluator-shaped and torch-free: commits an evaluation artifact where the evaluator would."""
    out = Path(ctx.workdir) / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"summary": {}, "datasets": {}}')  # no scores: not a real evaluation
    prefix = f"{cfg['model']}/{cfg['eval_id']}"
    artifacts.commit_dir(ctx.store, "evaluations", prefix, out, {"kind": "evaluation", "model": cfg["model"]})
    return {"outputs": {"evaluation": make_uri("evaluations", prefix + "/")}}


def evaluator_def():
    from services.evaluator.server import SERVICE
    return replace(SERVICE, recipes={"evaluate": "tests.hardening:evaluate_like"})


def make_source(store, name: str = SOURCE, tmp: Path | None = None) -> None:
    """A committed (tiny, fake) model the quantizer's validation accepts as a source."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        Path(d, "config.json").write_text('{"model_type": "qwen3"}')
        artifacts.commit_dir(store, "models", name, d, {"kind": "base"})


def spec(i: int | str) -> dict:
    return {"source_model": SOURCE, "method": "bnb_int8", "output_name": f"out-{i}"}


# ---------------------------------------------------------------- as a separate process

class ServiceProcess:
    """``python -m tests.hardening`` in its own process: what SIGKILL tests need."""

    def __init__(self, root: str, port: int, ctl: Path, env: dict | None = None, s3: str = ""):
        self.args = [sys.executable, "-m", "tests.hardening", "--root", str(root), "--port", str(port)] + \
            (["--s3", s3] if s3 else [])
        self.env = {**os.environ, CTL_ENV: str(ctl), "FTLAB_LOG_FORMAT": "json", **(env or {})}
        self.address, self.log = f"127.0.0.1:{port}", ctl / f"service-{port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServiceProcess":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        from services.common.rpc.clients import ServiceClient
        with ServiceClient("quantizer", self.address) as c:
            c.wait_healthy(60)
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def main(argv=None) -> None:
    from services.common.jobs.runtime import RuntimeOptions
    from services.common.rpc.service import RunningService
    from services.common.contract.settings import configure_logging
    from services.common.storage.store import LocalStore
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--s3", default="")
    a = p.parse_args(argv)
    configure_logging()
    if a.s3:
        from services.common.storage.s3 import S3Store
        from tests.s3_server import TEST_ACCESS_KEY, TEST_SECRET_KEY
        store = S3Store(a.s3, TEST_ACCESS_KEY, TEST_SECRET_KEY, region="us-east-1", retries=0, retry_deadline_s=30)
    else:
        store = LocalStore(a.root)
    store.ensure_buckets()
    svc = RunningService(service_def(), store, f"127.0.0.1:{a.port}",
                         RuntimeOptions(cancel_grace_s=1.0))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    svc.stop(2.0)


if __name__ == "__main__":
    main()
