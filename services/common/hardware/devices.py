"""Is there a GPU here, and which ones: the one answer the doors, the fork server, the launcher and
the jobs share. Torch-free (the doors must not import torch): FTLAB_DEVICE decides when set
(``cpu``: none; ``cuda`` or ``cuda:N``: a GPU), else the NVIDIA device nodes the driver creates
(``/dev/nvidia0``…) as CUDA_VISIBLE_DEVICES narrows them: unset, every node; empty or starting
with ``-1``, none (CUDA's own rule: the list ends at the first invalid entry)."""
from __future__ import annotations

import glob
import os
import re


def gpus() -> list[str]:
    """The GPUs a job here may use, as CUDA numbers them for it: CUDA_VISIBLE_DEVICES' entries
    (indices or UUIDs) or the device nodes' indices; empty when FTLAB_DEVICE is ``cpu``.
    FTLAB_DEVICE=cuda[:N] on a host without device nodes trusts the setting: one GPU, ``N``."""
    want = os.environ.get("FTLAB_DEVICE", "auto").strip().lower()
    if want == "cpu":
        return []
    nodes = sorted(int(m.group(1)) for p in glob.glob("/dev/nvidia[0-9]*") if (m := re.fullmatch(r"/dev/nvidia(\d+)", p)))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        found = [str(n) for n in nodes]
    else:
        found = []
        for entry in (e.strip() for e in visible.split(",")):
            if not entry or entry.startswith("-"):
                break
            found.append(entry)
        found = found if nodes else []
    if want.startswith("cuda") and not found:
        return [want.partition(":")[2] or "0"]
    return found


def granted() -> str:
    """CUDA_VISIBLE_DEVICES as a launcher (Ray) set it for this process, raw: what was granted,
    whether or not this host has the devices (Ray declares GPUs on CPU-only test nodes too)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def has_gpu() -> bool:
    """Whether jobs here run on a CUDA GPU."""
    return bool(gpus())


def device_type() -> str:
    """``cuda`` or ``cpu``: where jobs here run."""
    return "cuda" if has_gpu() else "cpu"


def torch_device():
    """The torch device a job runs on: FTLAB_DEVICE's (``cuda:1``) when set, else the first GPU
    when :func:`has_gpu` and torch can reach it, else the CPU. Imports torch."""
    import torch
    want = os.environ.get("FTLAB_DEVICE", "auto").strip().lower()
    if want != "auto":
        return torch.device(want)
    return torch.device("cuda" if has_gpu() and torch.cuda.is_available() else "cpu")
