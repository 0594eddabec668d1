"""Jobs' scratch folders: the service owns them. Each service process works under its own folder in
:func:`scratch_root`, locked while it lives; a job's folder inside it goes when the job's child exits
(services/common/jobs/runtime.py), and the folders of a service that died are swept at the next start."""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile


def scratch_root() -> str:
    """Where jobs' scratch folders live: ``$TMPDIR/ftlab-scratch`` (the images set ``TMPDIR`` to a volume)."""
    return os.path.join(tempfile.gettempdir(), "ftlab-scratch")


def hold_lock(path: str):
    """An open file holding an exclusive ``flock`` on ``path``, or None when another process holds it."""
    fh = open(path, "a")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def sweep_stale_scratch(root: str | None = None) -> list[str]:
    """Remove the scratch folders of service processes that are gone.

    Each runtime holds an ``flock`` on ``<its folder>/.lock`` while it lives (the kernel drops
    it when the process dies, even by SIGKILL; a pid would not do, containers reuse them).
    The service removes a job's folder when its child exits; a SIGKILLed service cannot, and a
    job's folder holds whole model copies (hundreds of MB), so the next service start sweeps.
    Returns the names of the folders removed."""
    root = root or scratch_root()
    removed = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        folder = os.path.join(root, name)
        lock = os.path.join(folder, ".lock")
        if not os.path.isdir(folder) or not os.path.exists(lock):
            continue  # not ours, or a runtime that is just taking its lock
        held = hold_lock(lock)
        if held is not None:
            with held:
                shutil.rmtree(folder, ignore_errors=True)
            removed.append(name)
    return removed
