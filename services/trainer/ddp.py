"""More than one process: the training loop (:func:`services.trainer.loop.train`) under torchrun.

The job's child (recipe.run) fetched the inputs and tokenized the examples; it writes them with
the config to a payload file and starts ``torchrun --nproc_per_node=<world_size> -m
services.trainer.ddp <payload>``. Every worker runs the same ``train``: transformers' Trainer
sees the torchrun environment and wraps the model in DDP (gloo on CPU, NCCL on GPUs; FSDP for
full fine-tuning on GPUs, see loop.fsdp_args). Rank 0 relays its events as JSON lines on
stdout, commits checkpoints and saves the model; the parent forwards the events to the job and
commits the model as in the one-process case."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common import devices

if TYPE_CHECKING:
    from services.trainer.config import TrainConfig

EVENT = "@ftlab-event "  # marks the rank-0 event lines on stdout


def _die_with_parent() -> None:
    """torchrun and its workers die with the job's child (which dies with the service)."""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg: "TrainConfig", base_dir: Path, examples: list[dict], out: Path, resume_dir: Path | None,
           store, report, total_steps: int) -> dict[str, Any]:
    work = out.parent
    payload = {"cfg": cfg.to_dict(), "base_dir": str(base_dir), "examples": examples, "out": str(out),
               "resume_dir": str(resume_dir) if resume_dir else None, "store": store.config(),
               "total_steps": total_steps, "stats": str(work / "ddp_stats.json")}
    (work / "ddp_payload.json").write_text(json.dumps(payload))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={cfg.world_size}",
           "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           "-m", "services.trainer.ddp", str(work / "ddp_payload.json")]
    report.log("launching: " + " ".join(cmd[2:]))
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          preexec_fn=_die_with_parent) as proc:
        for line in proc.stdout:
            if line.startswith(EVENT):
                ev = json.loads(line[len(EVENT):])
                getattr(report, ev.pop("kind"))(**ev)
            else:
                tail = (tail + [line.rstrip()])[-40:]
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with code {proc.returncode}:\n" + "\n".join(tail))
    return json.loads((work / "ddp_stats.json").read_text())


class _Relay:
    """A JobContext look-alike for rank 0: events as JSON lines on stdout."""

    @staticmethod
    def progress(step, total, metrics=None, message=""):
        print(EVENT + json.dumps({"kind": "progress", "step": step, "total": total,
                                  "metrics": metrics or {}, "message": message}), flush=True)

    @staticmethod
    def log(message):
        print(EVENT + json.dumps({"kind": "log", "message": message}), flush=True)


def main(payload_path: str) -> None:
    _die_with_parent()
    import torch

    from services.common.store_factory import open_store
    from services.trainer.config import TrainConfig
    from services.trainer.loop import train
    p = json.loads(Path(payload_path).read_text())
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    dev = torch.device(f"cuda:{local_rank}") if devices.torch_device().type == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    stats = train(TrainConfig.from_dict(p["cfg"]), Path(p["base_dir"]), p["examples"], Path(p["out"]),
                  Path(p["resume_dir"]) if p["resume_dir"] else None, open_store(p["store"]), _Relay,
                  p["total_steps"], dev)
    if rank == 0:
        Path(p["stats"]).write_text(json.dumps(stats))


if __name__ == "__main__":
    main(sys.argv[1])
