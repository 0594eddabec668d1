"""More than one process: the training loop (:func:`services.trainer.loop.train`) under torchrun.

The job's child (recipe.run) fetched the inputs and tokenized the examples; it writes them with
the config to a payload file and starts ``torchrun --nproc_per_node=<world_size> -m
services.trainer.ddp <payload>``. Every worker runs the same ``train``: transformers' Trainer
sees the torchrun environment and wraps the model in DDP (gloo on CPU, NCCL on GPUs; FSDP for
full fine-tuning on GPUs, see loop.fsdp_args). Rank 0 relays its events as JSON lines on
stdout, commits checkpoints and saves the model; the parent forwards the events to the job and
commits the model as in the one-process case.

Across nodes (``FTLAB_PLACEMENT=ray`` and a ``world_size`` larger than one node takes, see
services/common/jobs/ray_placement.py): Ray reserved one bundle per node (a placement group, STRICT_SPREAD)
and runs this job's child in the first; :func:`launch` starts torchrun here as node rank 0 and one
Ray actor per other bundle (:class:`NodeRank`) that runs torchrun there as node rank i, all meeting
at this node's address (torchrun's static rendezvous). A node rank that fails stops this one."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common.hardware import devices

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
        s.bind(("", 0))
        return s.getsockname()[1]


def launch(cfg: "TrainConfig", base_dir: Path, examples: list[dict], out: Path, resume_dir: Path | None,
           store, report, total_steps: int) -> dict[str, Any]:
    work = out.parent
    payload = {"cfg": cfg.to_dict(), "base_dir": str(base_dir), "examples": examples, "out": str(out),
               "resume_dir": str(resume_dir) if resume_dir else None, "store": store.config(),
               "total_steps": total_steps, "stats": str(work / "ddp_stats.json")}
    (work / "ddp_payload.json").write_text(json.dumps(payload))
    nodes = json.loads(os.environ.get("FTLAB_RAY_NODES", "null"))  # set by the Ray launcher
    ranks = nodes["ranks"] if nodes else [cfg.world_size]
    master = _node_ip() if nodes else "127.0.0.1"
    port = _free_port()
    cmd = torchrun_cmd(ranks, 0, master, port, work / "ddp_payload.json")
    report.log("launching: " + " ".join(cmd[2:]) + (f" (node rank 0 of {len(ranks)})" if nodes else ""))
    others = _start_other_nodes(nodes, payload, master, port, report) if nodes else []
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          preexec_fn=_die_with_parent) as proc:
        if others:  # a node rank that fails would leave this one waiting in a collective: stop it too
            threading.Thread(target=_stop_on_failure, args=(others, proc), daemon=True).start()
        for line in proc.stdout:
            if line.startswith(EVENT):
                ev = json.loads(line[len(EVENT):])
                getattr(report, ev.pop("kind"))(**ev)
            else:
                tail = (tail + [line.rstrip()])[-40:]
    failed = _failed_nodes(others)
    if proc.returncode != 0 or failed:
        raise RuntimeError(f"torchrun exited with code {proc.returncode}{failed}:\n" + "\n".join(tail))
    return json.loads((work / "ddp_stats.json").read_text())


def ranks_here(world_size: int) -> int:
    """Training processes on this node: all of them, or node rank 0's share of a multi-node job."""
    nodes = json.loads(os.environ.get("FTLAB_RAY_NODES", "null"))
    return nodes["ranks"][0] if nodes else world_size


def torchrun_cmd(ranks: list[int], node_rank: int, master: str, port: int, payload: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks[node_rank]}",
            f"--nnodes={len(ranks)}", f"--node_rank={node_rank}", f"--master_addr={master}",
            f"--master_port={port}", "-m", "services.trainer.ddp", str(payload)]


def _node_ip() -> str:
    import ray
    return ray.util.get_node_ip_address()


def _start_other_nodes(nodes: dict, payload: dict, master: str, port: int, report) -> list:
    """One :class:`NodeRank` actor in each other bundle of the job's placement group (this process
    connects to Ray as a driver: the actors die with it, so with the job)."""
    import ray
    from ray.util.placement_group import PlacementGroup
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    if not ray.is_initialized():
        ray.init(address=nodes["address"], namespace="ftlab", log_to_driver=False)
    pg = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(nodes["pg"])))
    agent = ray.remote(NodeRank)
    runs = []
    for i in range(1, len(nodes["ranks"])):
        opts = dict(nodes["bundles"][i])
        actor = agent.options(num_cpus=opts.pop("CPU", 0), num_gpus=opts.pop("GPU", 0), resources=opts,
                              scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
                              max_restarts=0).remote()
        runs.append(actor.run.remote(payload, nodes["ranks"], i, master, port))
    report.log(f"started node ranks 1..{len(nodes['ranks']) - 1} on the other nodes Ray reserved")
    return runs


def _stop_on_failure(runs: list, proc: subprocess.Popen) -> None:
    import ray
    pending = list(runs)
    while pending and proc.poll() is None:
        done, pending = ray.wait(pending, timeout=1.0)
        for ref in done:
            try:
                if ray.get(ref)["returncode"] == 0:
                    continue
            except ray.exceptions.RayError:
                pass
            proc.kill()
            return


def _failed_nodes(runs: list) -> str:
    import ray
    problems = []
    for i, ref in enumerate(runs, start=1):
        try:
            res = ray.get(ref, timeout=120)
            if res["returncode"] != 0:
                problems.append(f"node rank {i}: torchrun exited with code {res['returncode']}: {res['tail'][-500:]}")
        except Exception as exc:  # noqa: BLE001 - the actor, its node, or the wait
            problems.append(f"node rank {i}: {type(exc).__name__}: {str(exc)[:300]}")
    return ("; " + "; ".join(problems)) if problems else ""


class NodeRank:
    """torchrun for one other node of a multi-node job, in the environment Ray gave it (its GPUs).
    The base model comes from this node's own fetch when the first node's folder is not here."""

    def run(self, payload: dict, ranks: list[int], node_rank: int, master: str, port: int) -> dict:
        import tempfile
        work = Path(tempfile.mkdtemp(prefix=f"ftlab-node{node_rank}-"))
        try:
            payload = dict(payload, out=str(work / "out"), stats=str(work / "stats.json"))
            if not Path(payload["base_dir"]).exists():
                from services.common.torch_utils import modeling
                from services.common.storage.factory import open_store
                base, _ = modeling.fetch_model(open_store(payload["store"]), payload["cfg"]["base_model"], work)
                payload["base_dir"] = str(base)
            if payload["resume_dir"] and not Path(payload["resume_dir"]).exists():  # every rank resumes alike
                from services.common.storage.factory import open_store
                from services.trainer import checkpoints
                got = checkpoints.fetch_latest(open_store(payload["store"]), payload["cfg"]["checkpoint_prefix"],
                                               work / "resume")
                payload["resume_dir"] = str(got.path) if got else None
            (work / "payload.json").write_text(json.dumps(payload))
            proc = subprocess.run(torchrun_cmd(ranks, node_rank, master, port, work / "payload.json"),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  preexec_fn=_die_with_parent)
            return {"returncode": proc.returncode, "tail": proc.stdout[-4000:]}
        finally:
            import shutil
            shutil.rmtree(work, ignore_errors=True)


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

    from services.common.storage.factory import open_store
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
