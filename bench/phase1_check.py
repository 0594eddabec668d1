"""The Phase-1 plan shape through the real flow (issue #28), a long check (``make load-check``),
not part of ``make test``.

Every step of ``flows/experiments/phase1.yaml`` — 2 base models x 3 datasets x (6 LoRA ranks + full
fine-tuning) = 42 trainings, then their 42 evaluations and the 2 bases' = 86 jobs, all submitted at
once — run by ``ftlab run`` (real Prefect, the real flow) against the embedded stack (``ftlab up``:
the three services as their own processes on free ports, local storage, under a temporary
FTLAB_HOME). What is scaled down is the work of each step, never the plan's shape: the two bases are
the tiny random Qwen3 (seeds 0 and 1) standing in for Qwen3-0.6B and 1.7B; every training takes one
step on 8 rows of 64 tokens; every evaluation scores 2 items per task with at most 4 new tokens on
HF generate (the evaluator runs from .venv, whose lack of vLLM keeps it off a per-job engine start
that would dominate on a 2-core CPU). MLflow tracking is off.

While each flow runs, the three services' Health is probed every ``--probe-every`` seconds with a
1 s deadline; every probe must answer SERVING in time.

1. **The whole plan**, to the end: every one of the 86 steps must succeed.
2. **A cancel in the middle**: once run 1 has ``--cancel-after`` trainings done, the same plan on two
   more tiny bases (so nothing of run 1 is reused) as a second flow beside it; as soon as all 42 of
   its trainings are submitted (queued behind run 1's, as are its 2 base evaluations) it is
   interrupted (SIGINT, as Ctrl-C), and every job of it must be CANCELLED or SUCCEEDED (none QUEUED
   or RUNNING) within ``--cancel-within`` seconds. ``--skip-full``: this flow alone, interrupted once
   ``--cancel-after`` of its own trainings succeeded.

``ftlab report`` of run 1 is timed after it. A ListJobs of the monitor past its 30 s deadline is
recorded and fails the check (it does not end it).

Run: ``.venv/bin/python -m bench.phase1_check [--cancel-after 21] [--skip-full | --skip-cancel]``. Prints what it
measured and a JSON line; exits 1 when a check fails."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from services.common.contract.errors import FtlabError

ROOT = Path(__file__).resolve().parents[1]
PHASE1 = ROOT / "flows" / "experiments" / "phase1.yaml"
SHARED = Path(os.environ.get("FTLAB_SHARED_DIR", ROOT.parent / "shared"))
SERVICES = ("trainer", "quantizer", "evaluator")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
# One training step, one evaluation of 2 items: the work of a step, scaled down; the plan's shape kept.
STEP_WORK = {"max_steps": 1, "train_limit": 8, "per_device_batch_size": 1, "gradient_accumulation_steps": 1,
             "max_seq_length": 64}
EVAL_WORK = {"limit": 2, "batch_size": 2, "max_new_tokens": 4}


def plan(name: str, bases: list[str]) -> dict:
    """phase1.yaml with ``bases`` for its two base models and each step's work scaled down. The
    datasets are imported before (no ``data`` section)."""
    raw = yaml.safe_load(PHASE1.read_text())
    assert len(raw["base_models"]) == len(bases), raw["base_models"]
    raw.pop("data", None)
    return {**raw, "name": name, "base_models": bases, "defaults": {**raw["defaults"], **STEP_WORK},
            "evaluate": {**raw["evaluate"], **EVAL_WORK}, "timeouts_s": {"train": 1800, "evaluate": 1800}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prober:
    """Health/Check of every service every ``every`` s (1 s deadline), on a thread of its own."""

    def __init__(self, addresses: dict[str, str], every: float):
        from services.common.rpc.clients import ServiceClient
        self.clients = {s: ServiceClient(s, a, token=None, credentials=None) for s, a in addresses.items()}
        self.every, self.results, self.failures = every, [], []  # (service, ok, seconds); which failed when
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            for svc, c in self.clients.items():
                t = time.perf_counter()
                ok = c.healthy(timeout_s=1.0)
                self.results.append((svc, ok, time.perf_counter() - t))
                if not ok:
                    self.failures.append(f"{svc} at {time.strftime('%H:%M:%S')} (load {os.getloadavg()[0]:.0f})")
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        for c in self.clients.values():
            c.close()

    def summary(self) -> dict:
        lat = sorted(s for _, _, s in self.results)
        failed = [svc for svc, ok, s in self.results if not ok or s > 1.0]
        return {"probes": len(self.results), "failed": len(failed), "failures": self.failures[:20],
                "p50_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
                "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
                "max_ms": round(1000 * lat[-1], 1) if lat else None}


def jobs_of(clients, experiment: str) -> dict[str, dict[str, str]]:
    """service -> {job id: state} of the jobs this experiment submitted."""
    from services.common.rpc.clients import state_name
    return {svc: {j.job_id: state_name(j.state) for j in c.list_all() if j.request_id.startswith(f"{experiment}:")}
            for svc, c in clients.items()}


def counts(jobs: dict[str, dict[str, str]]) -> str:
    out = []
    for svc, states in jobs.items():
        if states:
            by = {}
            for s in states.values():
                by[s] = by.get(s, 0) + 1
            out.append(f"{svc} " + " ".join(f"{k}={v}" for k, v in sorted(by.items())))
    return "; ".join(out) or "no jobs yet"


def run_flow(env: dict, tmp: Path, name: str, bases: list[str], clients, probe_every: float,
             cancel_after: int | None, cancel_within: float) -> dict:
    """One ``ftlab run`` of the plan; with ``cancel_after``, SIGINT once that many trainings succeeded."""
    env = {**env, "PREFECT_HOME": str(tmp / f"prefect-{name}")}  # each flow its own Prefect database
    plan_file = tmp / f"{name}.yaml"
    plan_file.write_text(yaml.safe_dump(plan(name, bases)))
    from flows.experiment import load
    n_train = len(load(str(plan_file)).stage("train"))
    log_path = tmp / f"{name}.log"
    out: dict = {"experiment": name}
    t0 = time.time()
    with Prober({s: env[f"FTLAB_{s.upper()}_ADDR"] for s in SERVICES}, probe_every) as prober, \
            open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ftlab.cli", "run", str(plan_file), "--run-id", name],
                                cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        last_print, cancelled_at, peak_active = 0.0, None, 0
        try:
            while proc.poll() is None:
                time.sleep(2.0)
                try:
                    jobs = jobs_of(clients, name)
                except FtlabError as exc:  # a ListJobs past its 30 s: a finding, recorded, not the end
                    out.setdefault("monitor_errors", []).append(f"+{time.time() - t0:.0f}s {str(exc)[:120]}")
                    print(f"#   {name}: monitor ListJobs failed: {exc}", flush=True)
                    continue
                active = sum(s not in TERMINAL for states in jobs.values() for s in states.values())
                peak_active = max(peak_active, active)
                if time.time() - last_print > 20:
                    print(f"#   {name} +{time.time() - t0:.0f}s: {counts(jobs)}; health {prober.summary()}", flush=True)
                    last_print = time.time()
                trained = sum(s == "SUCCEEDED" for s in jobs["trainer"].values())
                width = len(jobs["trainer"])  # every training is submitted at once, first: full width
                if cancel_after is not None and cancelled_at is None and trained >= cancel_after and width == n_train:
                    out["jobs_at_cancel"] = counts(jobs)
                    print(f"#   {name}: {trained} trainings done, interrupting the flow (SIGINT)", flush=True)
                    proc.send_signal(signal.SIGINT)
                    cancelled_at = time.time()
                    break
            if cancelled_at is not None:
                while True:  # every job terminal?
                    try:
                        jobs = jobs_of(clients, name)
                    except FtlabError as exc:
                        out.setdefault("monitor_errors", []).append(f"after the cancel: {str(exc)[:120]}")
                        continue
                    left = [j for states in jobs.values() for j, s in states.items() if s not in TERMINAL]
                    if not left or time.time() - cancelled_at > max(cancel_within, 120):
                        break
                    time.sleep(0.25)
                out["all_jobs_ended_s"] = round(time.time() - cancelled_at, 2) if not left else None
                out["left_active"] = left
                out["jobs_after_cancel"] = counts(jobs)
                out["cancelled_jobs"] = sum(s == "CANCELLED" for st in jobs.values() for s in st.values())
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                out["flow_exited_s"] = round(time.time() - cancelled_at, 2)
            else:
                proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
        out["wall_s"] = round(time.time() - t0, 1)
        out["peak_active_jobs"] = peak_active
    out["returncode"] = proc.returncode
    out["health"] = prober.summary()
    text = log_path.read_text(errors="replace")
    try:
        out["jobs"] = {svc: len(states) for svc, states in jobs_of(clients, name).items()}
    except FtlabError as exc:
        out.setdefault("monitor_errors", []).append(f"at the end: {str(exc)[:120]}")
    if cancel_after is None:
        steps = [ln for ln in text.splitlines() if ln.startswith("steps: ")]
        out["steps_line"] = steps[-1] if steps else None
    else:
        # the flow's own interrupt handler (pipeline.py) cancels them; Prefect's crash hook then finds none left
        said = [ln.strip() for ln in text.splitlines() if "interrupted: cancelled" in ln]
        out["flow_said"] = said[0].split(" - ", 1)[-1][:120] if said else None
    out["log"] = str(log_path)
    return out


def cancel_during(env: dict, tmp: Path, full: str, bases: list[str], clients, probe_every: float,
                  full_trained: int, cancel_within: float, full_done: threading.Event) -> dict | None:
    """Once the flow ``full`` has ``full_trained`` trainings done (the middle of the phase), the
    same plan on ``bases`` as a second flow, interrupted as soon as all its trainings are submitted
    (full width: its trainings and base evaluations queued behind the first flow's).
    None when ``full`` ended before that."""
    while True:
        try:
            if sum(s == "SUCCEEDED" for s in jobs_of(clients, full)["trainer"].values()) >= full_trained:
                break
        except FtlabError:  # the full run's monitor records it
            pass
        if full_done.wait(2.0):
            return None
    print(f"#   {full}: {full_trained} trainings done, starting the flow to cancel", flush=True)
    return run_flow(env, tmp, "phase1-cancel", bases, clients, probe_every, 0, cancel_within)


def all_succeeded(steps_line: str | None, n: int = 86) -> bool:
    """Whether ``ftlab run``'s last line of step counts (``steps: 3 skipped, 86 succeeded``: the data
    steps are skipped when the datasets are in storage) says all ``n`` steps succeeded, none else."""
    if not steps_line:
        return False
    by = {k: int(v) for v, k in (part.split() for part in steps_line.removeprefix("steps: ").split(", "))}
    return by.get("succeeded") == n and set(by) <= {"succeeded", "skipped"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-full", action="store_true", help="only the cancelled run")
    ap.add_argument("--skip-cancel", action="store_true", help="only the full run")
    ap.add_argument("--cancel-after", type=int, default=21, help="trainings of the full run done when the flow to cancel starts (--skip-full: its own, "
                    "before the interrupt)")
    ap.add_argument("--cancel-within", type=float, default=30.0, help="seconds every job has to end in")
    ap.add_argument("--probe-every", type=float, default=0.5)
    ap.add_argument("--keep", action="store_true", help="keep the temporary FTLAB_HOME (logs, storage)")
    args = ap.parse_args()
    from services.common.data.importing import import_dataset
    from services.common.rpc.clients import ServiceClient
    from services.common.storage.store import LocalStore
    from services.common.torch_utils import modeling

    tmp = Path(tempfile.mkdtemp(prefix="phase1-check-"))
    home = tmp / "home"
    env = {**os.environ, "FTLAB_HOME": str(home), "FTLAB_STORAGE": "local", "FTLAB_LOCAL_ROOT": str(home / "storage"),
           "FTLAB_TRACKING_URI": "", "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_TO_API_ENABLED": "false", "HF_HUB_OFFLINE": "1", "FTLAB_LOG_FORMAT": "text",
           "FTLAB_MODEL_CACHE_DIR": str(tmp / "model-cache"), "PYTHONPATH": str(ROOT),
           "FTLAB_EVALUATOR_PYTHON": sys.executable,
           **{f"FTLAB_{s.upper()}_ADDR": f"127.0.0.1:{_free_port()}" for s in SERVICES}}
    store = LocalStore(home / "storage")
    store.ensure_buckets()
    t = time.time()
    bases = ["Qwen3-tinya-base", "Qwen3-tinyb-base", "Qwen3-tinyc-base", "Qwen3-tinyd-base"]
    for seed, name in enumerate(bases):
        modeling.make_tiny_qwen3(str(SHARED / "tokenizers" / "qwen3"), tmp / name, seed=seed)
        modeling.commit_base_model(store, name, tmp / name, {"source": "tiny-random-qwen3", "seed": seed})
    for task in ("arc", "squad", "openmath"):
        import_dataset(store, task, "seed", SHARED / "datasets" / "seed")
    print(f"# storage seeded (4 tiny bases, 3 seed datasets) in {time.time() - t:.0f}s; FTLAB_HOME {home}", flush=True)
    results: dict = {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                              capture_output=True).stdout.strip(),
                     "machine": f"{platform.node()} {os.cpu_count()} CPUs", "load_start": os.getloadavg()}
    ok = True
    try:
        t = time.time()
        up = subprocess.run([sys.executable, "-m", "ftlab.cli", "up"], cwd=tmp, env=env, text=True,
                            capture_output=True, timeout=300)
        if up.returncode:
            print(up.stdout + up.stderr)
            return 1
        print(f"# ftlab up in {time.time() - t:.0f}s", flush=True)
        clients = {s: ServiceClient(s, env[f"FTLAB_{s.upper()}_ADDR"], token=None, credentials=None) for s in SERVICES}
        cancel_thread, full_done = None, threading.Event()
        if not args.skip_cancel and not args.skip_full:  # in the middle of the full run, beside it
            def cancel_part():
                results["cancel"] = cancel_during(env, tmp, "phase1-shape", bases[2:], clients, args.probe_every,
                                                  args.cancel_after, args.cancel_within, full_done)
                print(f"# cancelled run: {json.dumps(results['cancel'])}", flush=True)
            cancel_thread = threading.Thread(target=cancel_part, daemon=True)
            cancel_thread.start()
        elif not args.skip_cancel:
            results["cancel"] = run_flow(env, tmp, "phase1-cancel", bases[2:], clients, args.probe_every,
                                         args.cancel_after, args.cancel_within)
            print(f"# cancelled run: {json.dumps(results['cancel'])}", flush=True)
        if not args.skip_full:
            full = run_flow(env, tmp, "phase1-shape", bases[:2], clients, args.probe_every, None, args.cancel_within)
            full_done.set()
            full["load_end"] = os.getloadavg()
            if "steps_line" in full:
                t = time.time()
                rep = subprocess.run([sys.executable, "-m", "ftlab.cli", "report", "phase1-shape"], cwd=tmp, env=env,
                                     capture_output=True, text=True, timeout=600)
                full["report_s"], full["report_rc"] = round(time.time() - t, 1), rep.returncode
            results["full"] = full
            print(f"# full run: {json.dumps(full)}", flush=True)
            ok &= full["returncode"] == 0 and full["health"]["failed"] == 0 and all_succeeded(full["steps_line"]) \
                and not full.get("monitor_errors")
        if cancel_thread is not None:
            cancel_thread.join()
        if not args.skip_cancel:
            cancel = results.get("cancel")
            ok &= cancel is not None and cancel["health"]["failed"] == 0 and not cancel.get("monitor_errors") and \
                cancel.get("all_jobs_ended_s") is not None and cancel["all_jobs_ended_s"] <= args.cancel_within \
                and cancel["cancelled_jobs"] > 0
        for c in clients.values():
            c.close()
    finally:
        subprocess.run([sys.executable, "-m", "ftlab.cli", "down"], cwd=tmp, env=env, capture_output=True, timeout=120)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    results["ok"] = bool(ok)
    print(json.dumps(results))
    print("phase1 check: " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
