"""The warm job runtime: each job's child process is forked from a per-service *fork server*
that has already imported the service's recipe modules (torch, transformers, peft...), instead
of being spawned as a fresh interpreter that pays those imports again for every job.

It is Python's own ``multiprocessing`` "forkserver" start method with a preload list
(``set_forkserver_preload``), so what the runtime relies on stays as it was: every job is still
its own process (own pid, own process group, killed with SIGTERM → SIGKILL on cancel; a job that
crashes or is OOM-killed takes only itself down), and the fork server is single-threaded, so
forking it is safe. The fork server dies with the service (it exits when the service's end of
its "alive" pipe closes; jobs drop their inherited copy, see :func:`_detach_from_server`), and
its children die with it (``PR_SET_PDEATHSIG`` in the child).

What a spawned child got from the service at start — its environment, working directory and
``sys.path`` — the forked child would instead inherit from the fork server as it was when the
server started; :func:`process` passes them along, so a job sees exactly what it saw under spawn.

On hosts where a job may use CUDA, the server preloads torch alone: bitsandbytes (which peft
imports) initialises CUDA at import, and a CUDA context cannot cross a fork.

The default; ``FTLAB_WORKER=spawn`` gives a fresh interpreter per job instead. A job also watches
the service's pid (:func:`_die_with_service`), so it never outlives a SIGKILLed service.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import threading
from typing import Any, Callable, Iterable

from services.common.hardware import devices

log = logging.getLogger("ftlab.runtime")
_preload: set[str] = set()
_lock = threading.Lock()


def mode() -> str:
    """``forkserver`` (the default, where the platform has it) or ``spawn`` (``FTLAB_WORKER=spawn``:
    a fresh interpreter per job, which pays the imports each time)."""
    want = os.environ.get("FTLAB_WORKER", "forkserver").strip().lower() or "forkserver"
    if want not in ("forkserver", "spawn"):
        raise ValueError(f"FTLAB_WORKER={want!r}: expected 'forkserver' or 'spawn'")
    if want == "forkserver" and "forkserver" not in mp.get_all_start_methods():
        return "spawn"
    return want


def context(recipes: Iterable[str], warm_imports: Iterable[str] = ()):
    """The multiprocessing context a runtime starts its jobs with. ``recipes`` are the
    ``module:function`` strings it runs; their modules, and ``warm_imports`` (what the recipes
    import inside functions: transformers' Trainer, peft, llm-compressor), are imported once in
    the fork server. A module that fails to import there is left to the job (and its error).

    The fork server is one per process: in a process that hosts several runtimes (tests, the
    embedded stack's in-process mode), the union of their modules is preloaded, as far as it is
    known when the server starts; a module it lacks is simply imported in the child."""
    if mode() == "spawn":
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    with _lock:
        if devices.has_gpu():
            # bitsandbytes (imported by peft at import time) initialises CUDA when it loads, and a
            # CUDA context cannot cross a fork: on GPU hosts the server preloads torch alone
            # (torch's import does not touch CUDA); each job imports the rest itself.
            _preload.add("torch")
        else:
            _preload.update(r.partition(":")[0] for r in recipes)
            _preload.update(warm_imports)
        _preload.add(__name__)
        ctx.set_forkserver_preload(sorted(_preload))
    return ctx


def process(ctx, target: Callable[..., Any], args: tuple, name: str, service: str = "",
            extra_env: dict[str, str] | None = None):
    """``ctx.Process`` running ``target(*args)`` in the environment, working directory and
    ``sys.path`` the caller has now (as a spawned child would), plus ``extra_env`` (a Ray job's
    service settings: the Ray worker that starts it is shared by the service's jobs) and
    ``FTLAB_SERVICE`` (which names the service's model cache, services/common/storage/model_cache.py)."""
    env = dict(os.environ) | dict(extra_env or {})
    if service:
        env["FTLAB_SERVICE"] = service
    return ctx.Process(target=_enter, name=name, daemon=False,
                       args=(env, os.getcwd(), list(sys.path), os.getpid(), target, args))


def _enter(environ: dict[str, str], cwd: str, path: list[str], service_pid: int,
           target: Callable[..., Any], args: tuple) -> None:
    _die_with_service(service_pid)
    _detach_from_server()
    os.environ.clear()
    os.environ.update(environ)
    try:
        os.chdir(cwd)
    except OSError:
        pass  # the service's folder is gone; the job never relied on it (spawn would have failed)
    sys.path[:] = path
    target(*args)


def _detach_from_server() -> None:
    """Close this child's copy of the fork server's "alive" pipe. multiprocessing hands every
    forked child that write end (so the child could start processes through the same server);
    but the server exits only at EOF on it, so while a job held it, a SIGKILLed service would
    leave its fork server alive, and the job with it (``PR_SET_PDEATHSIG`` fires when the
    *fork server* dies). Closed, the server dies with the service and takes its jobs along."""
    from multiprocessing import forkserver
    fd = getattr(forkserver._forkserver, "_forkserver_alive_fd", None)
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
        forkserver._forkserver._forkserver_alive_fd = None
        forkserver._forkserver._forkserver_pid = None  # a process this job starts gets its own server


def _die_with_service(pid: int) -> None:
    """SIGKILL this job (its process group, once it leads one) when the service process ``pid``
    exits, however it exits. A forked job's parent is the fork server, not the service, so
    ``PR_SET_PDEATHSIG`` alone depends on the fork server noticing the service's death and
    exiting (a trainer job once outlived its SIGKILLed service that way and committed its model);
    a pidfd (Linux ≥ 5.3) becomes readable the moment the service is gone. Without pidfds, the
    service's pid is polled every half second."""
    import select
    import signal
    import time

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = -1  # already gone
    except (AttributeError, OSError):
        fd = None

    def _watch() -> None:
        if fd is None:
            while _alive(pid):
                time.sleep(0.5)
        elif fd >= 0:
            select.select([fd], [], [])
        # Kill the group only when this job leads it (job_context.child_main's setpgrp): before
        # that, the group is the service's own, and may be its caller's (a shell, a test run).
        me = os.getpid()
        if os.getpgrp() == me:
            os.killpg(me, signal.SIGKILL)
        os.kill(me, signal.SIGKILL)

    threading.Thread(target=_watch, name="ftlab-die-with-service", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def warm_up(ctx) -> threading.Event:
    """Start the fork server now, in the background, so the first job does not wait for the
    imports. Returns an event set once the server forks (or failed to start: the first job then
    reports why); the runtime takes no job before it, because a fork server that is still importing
    makes ``Process.start()`` block, with the runtime's lock and a job's lease held. (Set at once
    under spawn.)"""
    ready = threading.Event()
    if getattr(ctx, "_name", "") != "forkserver":
        ready.set()
        return ready

    def _go():
        try:
            p = ctx.Process(target=_noop, name="ftlab-warm-up", daemon=True)
            p.start()
            p.join()
        except Exception:  # the first job starts the server then, and reports what is wrong
            log.exception("could not warm up the job fork server")
        finally:
            ready.set()

    threading.Thread(target=_go, name="ftlab-warm-up", daemon=True).start()
    return ready


def _noop() -> None:
    pass
