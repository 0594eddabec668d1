"""The embedded stack: the three services as separate local processes on loopback ports,
with local storage under ./.ftlab/ (``ftlab up`` / ``ftlab down``)."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from services.common.rpc.clients import ServiceClient, ServiceUnavailable
from services.common.contract.settings import SERVICES, service_address

STATE_DIR = Path(os.environ.get("FTLAB_HOME", ".ftlab"))


def _pidfile(service: str) -> Path:
    return STATE_DIR / "run" / f"{service}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def running() -> dict[str, int]:
    out = {}
    for svc in SERVICES:
        f = _pidfile(svc)
        if f.exists() and _alive(pid := int(f.read_text())):
            out[svc] = pid
    return out


def service_python(service: str) -> str:
    """The interpreter a service runs under: its own environment where one exists (the evaluator's
    ``.venv-evaluator`` holds vLLM, whose pins clash with llm-compressor's; docs/ENVIRONMENTS.md),
    else this one. ``FTLAB_<SERVICE>_PYTHON`` overrides."""
    if (override := os.environ.get(f"FTLAB_{service.upper()}_PYTHON")):
        return override
    own = Path(__file__).resolve().parents[1] / f".venv-{service}" / "bin" / "python"
    return str(own) if own.exists() else sys.executable


def default_tracking_uri() -> str:
    """The embedded stack tracks into a SQLite store under FTLAB_HOME (no server: the services and
    the flow write it directly; ``ftlab ui`` serves it). Empty when MLflow is not installed."""
    import importlib.util
    if importlib.util.find_spec("mlflow") is None:
        return ""
    return f"sqlite:///{(STATE_DIR / 'mlflow.db').resolve()}"


def stack_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("FTLAB_STORAGE", "local")
    env.setdefault("FTLAB_LOCAL_ROOT", str((STATE_DIR / "storage").resolve()))
    env.setdefault("FTLAB_TRACKING_URI", default_tracking_uri())  # FTLAB_TRACKING_URI= (empty) turns it off
    # With no GPU the three services' jobs share the CPU: one torch thread per evaluation or
    # quantization job leaves the other cores to the trainer (two spinning OpenMP threads per
    # process against each other cost far more than they give; docs/BENCHMARKS.md). The mini-study
    # without it ran its first training at ~50 s a step instead of ~8.
    if shutil.which("nvidia-smi") is None:
        env.setdefault("FTLAB_CPU_THREADS", "1")
    return env


def port_in_use(address: str) -> bool:
    """Whether something already listens on ``address`` (host:port) here: a health check there
    would answer for that other process (another stack on the default ports), not for ours."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is not "in use"
            s.bind((host, int(port)))
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    except ValueError:
        return False
    return False


def up(timeout_s: float = 120.0) -> dict[str, str]:
    """Start whichever services are not running; wait until all report SERVING. A service whose
    address another process already listens on is refused before anything starts."""
    already = running()
    env = stack_env()
    taken = [f"{svc} {service_address(svc, env)}" for svc in SERVICES
             if svc not in already and port_in_use(service_address(svc, env))]
    if taken:
        raise ServiceUnavailable(f"already in use by another process (another ftlab stack?): {', '.join(taken)}; "
                                 "set FTLAB_TRAINER_ADDR, FTLAB_QUANTIZER_ADDR, FTLAB_EVALUATOR_ADDR to free "
                                 "ports (and FTLAB_HOME to a folder of its own), or stop that process")
    (STATE_DIR / "run").mkdir(parents=True, exist_ok=True)
    (STATE_DIR / "logs").mkdir(parents=True, exist_ok=True)
    started = {}
    for svc in SERVICES:
        if svc in already:
            continue
        log = open(STATE_DIR / "logs" / f"{svc}.log", "ab")
        started[svc] = subprocess.Popen([service_python(svc), "-m", f"services.{svc}.server"], env=env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _pidfile(svc).write_text(str(started[svc].pid))
    try:
        _wait_healthy(started, env, timeout_s)
    except ServiceUnavailable:
        for svc, proc in started.items():  # a half-started stack is not left behind
            _stop(svc, proc.pid, grace_s=10.0)
        raise
    return {svc: service_address(svc) for svc in SERVICES}


def _wait_healthy(started: dict[str, subprocess.Popen], env: dict[str, str], timeout_s: float) -> None:
    """Every service SERVING, or ServiceUnavailable naming the one that exited at start (with its
    log's last line: checked each poll, for every service, not only the one waited on) or those
    still not healthy at the deadline."""
    deadline = time.time() + timeout_s
    clients = {svc: ServiceClient(svc) for svc in SERVICES}
    pending = list(SERVICES)
    try:
        while pending:
            for svc, proc in started.items():
                if proc.poll() is not None:
                    log_path = STATE_DIR / "logs" / f"{svc}.log"
                    raise ServiceUnavailable(f"{svc} service exited at start (code {proc.returncode}): "
                                             f"{_last_line(log_path)}; see {log_path}")
            pending = [svc for svc in pending if not clients[svc].healthy()]
            if pending and time.time() > deadline:
                raise ServiceUnavailable("; ".join(
                    f"{svc} service at {service_address(svc, env)} not healthy after {timeout_s:.0f}s, see "
                    f"{STATE_DIR / 'logs' / f'{svc}.log'}" for svc in pending))
            if pending:
                time.sleep(0.3)
    finally:
        for c in clients.values():
            c.close()


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (at most 400 characters), for an error message."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:400] if lines else "(empty log)"


def down(grace_s: float = 15.0) -> list[str]:
    """SIGTERM each service (they stop their jobs and save their records), SIGKILL after grace."""
    return [svc for svc, pid in running().items() if _stop(svc, pid, grace_s)]


def _stop(svc: str, pid: int, grace_s: float) -> bool:
    """Stop one service's process group: SIGTERM, SIGKILL after grace; False when it had exited."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:  # it exited since running() saw it (e.g. refused its settings)
        _pidfile(svc).unlink(missing_ok=True)
        return False
    deadline = time.time() + grace_s
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.2)
        try:
            os.waitpid(pid, os.WNOHANG)  # reap if it is our child
        except ChildProcessError:
            pass
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _pidfile(svc).unlink(missing_ok=True)
    return True
