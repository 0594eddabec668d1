"""The child side of a job: what a recipe gets (:class:`JobContext`) and the entry point of the
child process the job runtime (services/common/jobs/runtime.py) starts for each job."""
from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import signal
import sys
import traceback

from services.common.jobs.record import EventType
from services.common.storage.store import ObjectStore
from services.common.storage.factory import open_store


class JobContext:
    """What a recipe gets: the store, a scratch folder, and ways to report progress.

    ``workdir``: the job's scratch folder, the service's to remove when the child exits (however it
    ends). ``attempt``: 1, or more when a restarted service re-queued the job. Events go to the
    service through a queue; each becomes one event of the job's record (WatchJob streams them)."""

    def __init__(self, job_id: str, store: ObjectStore, events: "mp.Queue", workdir: str, attempt: int = 1):
        self.job_id, self.store, self._q, self.workdir = job_id, store, events, workdir
        self.attempt = attempt  # > 1 when a restarted service re-queued this job

    def progress(self, step: int, total: int, metrics: dict[str, float] | None = None, message: str = ""):
        """``step`` of ``total`` (the recipe's own unit: optimizer steps, items, layers)."""
        self._q.put({"type": EventType.PROGRESS.value, "step": int(step), "total": int(total),
                     "metrics": {k: float(v) for k, v in (metrics or {}).items()}, "message": message})

    def log(self, message: str) -> None:
        self._q.put({"type": EventType.LOG.value, "message": message})

    def metrics(self, metrics: dict[str, float], message: str = "") -> None:
        self._q.put({"type": EventType.METRICS.value, "message": message,
                     "metrics": {k: float(v) for k, v in metrics.items()}})


def child_main(recipe: str, job_id: str, attempt: int, config: dict, store_config: dict,
               events: "mp.Queue", workdir: str) -> None:
    """The job's child process: reopen the store from ``store_config``, call the recipe
    (``"module:function"``) as ``run(ctx, config)`` and send its result (``{"outputs": {name: uri},
    "metrics": {name: float}}``) or its error (exit code 1) back through ``events``."""
    # Own process group: cancel signals the whole group, so helpers the recipe starts die too.
    os.setpgrp()
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        module, _, func = recipe.partition(":")
        run = getattr(importlib.import_module(module), func)
        ctx = JobContext(job_id, open_store(store_config), events, workdir, attempt)
        result = run(ctx, config) or {}
        events.put({"type": "result", "outputs": result.get("outputs", {}),
                    "metrics": {k: float(v) for k, v in result.get("metrics", {}).items()}})
    except SystemExit:
        raise
    except BaseException as exc:  # report, then exit non-zero
        events.put({"type": "error", "message": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()})
        sys.exit(1)
    finally:
        events.close()
        events.join_thread()


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when the service process dies, even by SIGKILL, so a killed
    service leaves no orphan job running (and committing) behind its back. (The signal follows
    the parent *thread* that started the child: the long-lived dispatcher thread.)"""
    if sys.platform.startswith("linux"):
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the child makes itself a group leader first thing
    except (ProcessLookupError, PermissionError):
        try:  # not a group leader yet: signal the process itself
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
