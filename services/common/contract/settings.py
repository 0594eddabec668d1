"""Settings from FTLAB_* environment variables (one place; the compose file and docs list the same)."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from dataclasses import dataclass

from services.common.contract.errors import ValidationError

DEFAULT_PORTS = {"trainer": 50061, "quantizer": 50062, "evaluator": 50063}
SERVICES = tuple(DEFAULT_PORTS)


def service_address(service: str, env=os.environ) -> str:
    """Where clients reach a service: FTLAB_<SERVICE>_ADDR, default 127.0.0.1:<port>."""
    return env.get(f"FTLAB_{service.upper()}_ADDR", f"127.0.0.1:{DEFAULT_PORTS[service]}")


def tracking_uri(env=os.environ) -> str:
    """FTLAB_TRACKING_URI: where jobs are tracked (an MLflow tracking URI: ``http://mlflow:5000``,
    ``sqlite:///path/mlflow.db``); empty turns tracking off (services/common/tracking/tracker.py). The
    embedded stack defaults it to a SQLite store under FTLAB_HOME (ftlab/stack.py)."""
    return env.get("FTLAB_TRACKING_URI", "").strip()


DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def cpu_threads(env=os.environ) -> int | None:
    """FTLAB_CPU_THREADS: torch's CPU threads for each evaluation and quantization job (the trainer
    does not use it), None when unset or blank. Raises ValidationError unless a whole number >= 1.
    Every service checks it at start (ServiceSettings.from_env); the jobs read it through here."""
    raw = env.get("FTLAB_CPU_THREADS", "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ValidationError(f"FTLAB_CPU_THREADS={raw[:40]!r}: must be a whole number >= 1")
    return int(raw)


def max_message_bytes(env=os.environ) -> int:
    """The one gRPC message size limit (FTLAB_GRPC_MAX_MESSAGE_BYTES, default 16 MiB) that servers
    (send and receive) and clients (send and receive) both use, so a client can always read what a
    server may send. ListJobs pages stay under it (see ``JobMethods.ListJobs``)."""
    raw = env.get("FTLAB_GRPC_MAX_MESSAGE_BYTES", "").strip()
    if not raw:
        return DEFAULT_MAX_MESSAGE_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 64 * 1024:
        raise ValidationError(f"FTLAB_GRPC_MAX_MESSAGE_BYTES={raw[:40]!r}: must be a whole number of bytes >= 65536")
    return value


def grpc_message_options(env=os.environ) -> list[tuple[str, int]]:
    """Channel/server options for :func:`max_message_bytes`."""
    limit = max_message_bytes(env)
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]


PLACEMENTS = ("local", "ray")


@dataclass(frozen=True)
class Placement:
    """Where jobs run (services/common/jobs/placement.py). ``FTLAB_PLACEMENT``: ``local`` (default: children
    of the service, ``FTLAB_MAX_RUNNING_JOBS`` at a time) or ``ray`` (Ray places each job by the
    GPUs it needs). ``FTLAB_RAY_ADDRESS``: the cluster (``auto``: the one ``ray start`` made here;
    empty: a private local Ray). ``FTLAB_DEVICE_MEMORY_GB``: GiB per GPU, which turns a job's memory
    estimate into a fraction of one GPU (unset: whole GPUs). ``FTLAB_RAY_JOB_CPUS``: CPUs a job holds
    (per node). ``FTLAB_RAY_RANKS_PER_NODE``: training processes one node takes; a training job with a
    larger ``world_size`` runs across nodes (unset: the GPUs of the largest node; one node on CPU)."""
    mode: str = "local"
    ray_address: str = ""
    device_memory_gb: float | None = None
    job_cpus: float = 1.0
    ranks_per_node: int | None = None
    problems: tuple[str, ...] = ()


def placement(env=os.environ) -> Placement:
    """Parse the placement settings; ``problems`` lists every bad value (ServiceSettings raises them)."""
    problems = []
    mode = env.get("FTLAB_PLACEMENT", "").strip().lower() or "local"
    if mode not in PLACEMENTS:
        problems.append(f"FTLAB_PLACEMENT={mode[:40]!r}: expected local (default) or ray")
        mode = "local"

    def number(name, default, positive):
        raw = env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
            if value > 0 or (value == 0 and not positive):
                return value
        except ValueError:
            pass
        problems.append(f"{name}={raw[:40]!r}: must be a number {'> 0' if positive else '>= 0'}")
        return default

    ranks = env.get("FTLAB_RAY_RANKS_PER_NODE", "").strip()
    if ranks and not (ranks.isascii() and ranks.isdigit() and int(ranks) >= 1):
        problems.append(f"FTLAB_RAY_RANKS_PER_NODE={ranks[:40]!r}: must be a whole number >= 1")
        ranks = ""
    return Placement(mode, env.get("FTLAB_RAY_ADDRESS", "").strip(), number("FTLAB_DEVICE_MEMORY_GB", None, True),
                     number("FTLAB_RAY_JOB_CPUS", 1.0, False), int(ranks) if ranks else None, tuple(problems))


@dataclass(frozen=True)
class ServiceSettings:
    service: str
    listen: str              # FTLAB_LISTEN, default: the service address
    max_running: int         # FTLAB_MAX_RUNNING_JOBS, default 1 (one job per device)
    cancel_grace_s: float    # FTLAB_CANCEL_GRACE_S, default 10
    metrics_port: int | None = None  # FTLAB_METRICS_PORT: Prometheus /metrics port; empty = off

    @classmethod
    def from_env(cls, service: str, env=os.environ) -> "ServiceSettings":
        problems = []

        def num(name, default, cast, minimum):
            raw = env.get(name, str(default))
            try:
                value = cast(raw)
                if value < minimum:
                    raise ValueError
                return value
            except ValueError:
                kind = "a whole number" if cast is int else "a number"
                problems.append(f"{name}={raw[:40]!r}: must be {kind} >= {minimum}")
                return default

        s = cls(service=service, listen=env.get("FTLAB_LISTEN", service_address(service, env)),
                max_running=num("FTLAB_MAX_RUNNING_JOBS", 1, int, 1),
                cancel_grace_s=num("FTLAB_CANCEL_GRACE_S", 10.0, float, 0),
                metrics_port=num("FTLAB_METRICS_PORT", 0, int, 1) if env.get("FTLAB_METRICS_PORT", "").strip() else None)
        worker = env.get("FTLAB_WORKER", "").strip().lower()
        if worker not in ("", "forkserver", "spawn"):  # listed with the others, before warm_worker.mode() raises
            problems.append(f"FTLAB_WORKER={worker[:40]!r}: expected forkserver (default) or spawn")
        problems.extend(placement(env).problems)
        if env.get("FTLAB_REPLICA_ID", "").strip():  # the setting of the S3 lease queue, retired with it
            problems.append("FTLAB_REPLICA_ID is set, but replicas of a service sharing one store are no longer "
                            "supported (their lease queue is gone): run one replica per service and store, and "
                            "FTLAB_PLACEMENT=ray to run its jobs on more GPUs or hosts (docs/ARCHITECTURE.md, "
                            "Scheduling); unset FTLAB_REPLICA_ID")
        try:
            cpu_threads(env)  # used by the jobs only; a bad value stops the service, not each job
        except ValidationError as exc:
            problems.extend(exc.problems)
        if tracking_uri(env) and importlib.util.find_spec("mlflow") is None:
            problems.append("FTLAB_TRACKING_URI is set but mlflow is not installed: pip install 'ftlab[tracking]', "
                            "or set FTLAB_TRACKING_URI= (empty) to turn tracking off")
        if s.metrics_port is not None and s.metrics_port > 65535:
            problems.append(f"FTLAB_METRICS_PORT={s.metrics_port}: must be a port number <= 65535")
        if problems:
            raise ValidationError(problems)
        return s


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        for key in ("service", "job_id", "request_id"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(env=os.environ) -> None:
    """FTLAB_LOG_LEVEL (default INFO), FTLAB_LOG_FORMAT json|text (default json)."""
    handler = logging.StreamHandler(sys.stderr)
    if env.get("FTLAB_LOG_FORMAT", "json") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(env.get("FTLAB_LOG_LEVEL", "INFO").upper())
