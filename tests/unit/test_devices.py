"""One torch-free GPU probe (services/common/hardware/devices.py) answers for the doors, the fork server,
the launcher and the jobs, and honours CUDA_VISIBLE_DEVICES (empty: no GPU) as CUDA does."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.common.hardware import devices

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def host(monkeypatch):
    """A host with the given NVIDIA device nodes; FTLAB_DEVICE and CUDA_VISIBLE_DEVICES unset."""
    monkeypatch.delenv("FTLAB_DEVICE", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def nodes(*indices):
        monkeypatch.setattr(devices.glob, "glob", lambda pattern: [f"/dev/nvidia{i}" for i in indices]
                            + (["/dev/nvidiactl"] if indices else []))
    return nodes


@pytest.mark.parametrize("nodes,visible,device,want", [
    ((), None, None, []),                        # no driver nodes: no GPU
    ((0, 1), None, None, ["0", "1"]),            # every node
    ((0, 1), "", None, []),                      # CUDA_VISIBLE_DEVICES="": none (the trainer door said GPU)
    ((0, 1), "-1", None, []),
    ((0, 1), "1", None, ["1"]),
    ((0, 1), "0,-1,1", None, ["0"]),             # CUDA stops at the first invalid entry
    ((0,), "GPU-6f2c", None, ["GPU-6f2c"]),      # UUIDs
    ((), "0", None, []),                         # a visible list without a driver: none
    ((0, 1), None, "cpu", []),                   # FTLAB_DEVICE decides
    ((), None, "cuda:1", ["1"]),
])
def test_the_probe(host, monkeypatch, nodes, visible, device, want):
    host(*nodes)
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    if device is not None:
        monkeypatch.setenv("FTLAB_DEVICE", device)
    assert devices.gpus() == want
    assert devices.device_type() == ("cuda" if want else "cpu")


def test_hidden_gpus_mean_cpu_plans_at_every_door(host, monkeypatch):
    """CUDA_VISIBLE_DEVICES="" on a GPU host: the trainer's door planned bf16 CUDA memory and
    accepted adamw_8bit while the job ran on the CPU; now every door and the jobs say CPU."""
    import torch

    from services.common.torch_utils import modeling
    from services.common.contract.errors import PreconditionError
    from services.trainer.config import TrainConfig, _check_preconditions
    host(0)
    assert TrainConfig.resolve({"base_model": "m", "dataset": "arc"}).device_type == "cuda"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cfg = TrainConfig.resolve({"base_model": "m", "dataset": "arc", "optimizer": "adamw_8bit"})
    assert cfg.device_type == "cpu"
    with pytest.raises(PreconditionError, match="needs a CUDA GPU"):
        _check_preconditions(cfg)
    assert modeling.device() == torch.device("cpu")
    from services.evaluator import engines
    assert engines.on_cpu()


def test_no_module_probes_for_itself():
    # reading the variable or the device nodes is probing; naming them in prose is not
    probe = re.compile(r"/dev/nvidia|(environ|getenv)[^\n]*CUDA_VISIBLE_DEVICES|torch\.cuda\.is_available\(\)")
    allowed = {"services/common/hardware/devices.py",
               "services/common/torch_utils/modeling.py"}  # peak-memory statistics: whether CUDA was used, not a probe
    found = []
    for folder in ("services", "flows", "ftlab"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            if rel not in allowed and "generated" not in rel and probe.search(path.read_text()):
                found.append(rel)
    assert not found, f"ask services/common/hardware/devices.py instead: {found}"
