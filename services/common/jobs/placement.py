"""Where a job's process runs: the launcher behind :class:`services.common.jobs.runtime.JobRuntime`.

The runtime owns the job records, the visible queue, WatchJob, cancel and recovery; a launcher only
starts one job's process and hands back a :class:`Handle` the runtime supervises. Two launchers,
one setting (``FTLAB_PLACEMENT``, services/common/contract/settings.py):

- ``local`` (the default): a child of this service, forked from its warm fork server or spawned
  (services/common/jobs/fork_server.py). The runtime runs ``FTLAB_MAX_RUNNING_JOBS`` at a time.
- ``ray``: a Ray actor that asks for what the job needs (GPUs, a fraction of one, the service's
  environment) and runs the same child where Ray places it (services/common/jobs/ray_placement.py).

A handle reads like the ``multiprocessing.Process`` + events queue pair the runtime always had:
``get(timeout)`` (an event, or ``queue.Empty``), ``is_alive()``, ``exitcode``, ``signal(sig)``,
``close()`` (the job's scratch folder goes; the Ray actor is released). ``placed`` says whether the
job already holds its resources; a Ray job that is still waiting for them stays QUEUED and its
handle first yields a ``{"type": "placed"}`` message when Ray starts it.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from typing import Any, Iterable

from services.common.jobs import fork_server as warm_worker
from services.common.jobs.child import child_main, signal_group


class LocalHandle:
    """A child of this service: the warm fork server's (or a spawned) process and its events queue."""
    placed = True
    lost = False  # only a Ray job can lose its node

    def __init__(self, ctx, service: str, recipe: str, job_id: str, attempt: int, config: dict,
                 store_config: dict, scratch: str):
        # The service owns the scratch folder and removes it when the child exits, however it
        # exits: a killed or cancelled child cannot clean up after itself.
        self.workdir = tempfile.mkdtemp(prefix=f"{job_id}-", dir=scratch)
        self.events = ctx.Queue()
        self.proc = warm_worker.process(ctx, child_main, name=f"ftlab-{job_id}", service=service,
                                        args=(recipe, job_id, attempt, config, store_config, self.events,
                                              self.workdir))

    def start(self) -> None:
        self.proc.start()

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def where(self) -> str:
        return f"child pid {self.proc.pid}"

    def get(self, timeout: float) -> dict[str, Any]:
        return self.events.get(timeout=timeout)

    def is_alive(self) -> bool:
        return self.proc.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self.proc.exitcode

    def signal(self, sig: int) -> None:
        if self.proc.pid is not None:
            signal_group(self.proc.pid, sig)

    def close(self) -> None:
        self.proc.join()
        shutil.rmtree(self.workdir, ignore_errors=True)


class LocalLauncher:
    """Jobs as children of this service, at most ``FTLAB_MAX_RUNNING_JOBS`` at a time."""
    limits_running = True  # the runtime's max_running is the only limit here

    def __init__(self, service: str, recipes: Iterable[str], warm_imports: Iterable[str] = ()):
        self.service = service
        self._mp = warm_worker.context(recipes, warm_imports)  # children fork from a warm server

    def warm_up(self):
        return warm_worker.warm_up(self._mp)

    def launch(self, job_id: str, kind: str, recipe: str, attempt: int, config: dict, store_config: dict,
               scratch: str) -> LocalHandle:
        return LocalHandle(self._mp, self.service, recipe, job_id, attempt, config, store_config, scratch)

    def reattach(self, job_id: str, attempt: int):
        return None  # a local child never outlives its service


def launcher(service: str, recipes: Iterable[str], warm_imports: Iterable[str] = (), env=os.environ):
    """The launcher ``FTLAB_PLACEMENT`` names (checked by ServiceSettings.from_env at start)."""
    from services.common.contract.settings import placement
    p = placement(env)
    if p.mode == "ray":
        from services.common.jobs.ray_placement import RayLauncher
        return RayLauncher(service, p)
    return LocalLauncher(service, recipes, warm_imports)
