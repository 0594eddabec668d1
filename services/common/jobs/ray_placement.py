"""Jobs placed by Ray (``FTLAB_PLACEMENT=ray``): each job is one Ray actor that asks for what the
job needs, and the job's child process runs inside it, where Ray put it.

What a job asks for (:func:`demand`): GPUs — a training job's ``world_size``, one for any other
job, none where the job runs on the CPU (the config's ``device_type``, else the service's
``FTLAB_DEVICE``) or the cluster has no GPUs — or a fraction of one GPU where the door's memory
estimate (``memory_estimate_gb``) shows that several jobs fit one device of
``FTLAB_DEVICE_MEMORY_GB``; ``FTLAB_RAY_JOB_CPUS`` CPUs; and one unit of the custom resource
``ftlab-env-<service>``, which only the nodes that can run the service's environment advertise
(``ray start --resources '{"ftlab-env-trainer": 1000}'``). Ray queues the actor until a node has
all of it free (a 4-GPU job waits for 4 GPUs on one node: an actor never spans nodes) and sets
``CUDA_VISIBLE_DEVICES`` to the GPUs it granted; the child inherits it, so nothing uses a GPU it
was not given.

The actor (:class:`JobActor`) starts the same child as the local launcher (``job_context.child_main``,
forked from the actor's process, own process group) and buffers its events; the service polls them (:class:`RayHandle`).
The actor is *detached* and named ``<service>.<job_id>.<attempt>`` in the ``ftlab`` namespace: a service
that crashed finds its running jobs again on restart (:meth:`RayLauncher.reattach`), and a name
holds one copy of a job. The child dies with its actor (the pid watchdog of warm_worker), so a
lost node or a killed actor never leaves a copy running; a job whose actor was lost is re-queued by
the runtime (at most ``max_attempts`` starts) and says why. An actor whose job has ended and that
nobody polled for ``ORPHAN_S`` exits by itself, so a service gone for good cannot hold GPUs forever.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import queue
import shutil
import tempfile
import threading
import time
from multiprocessing.connection import wait
from typing import Any

from services.common.hardware import devices
from services.common.jobs.record import EventType
from services.common.contract.settings import SERVICES, Placement

NAMESPACE = "ftlab"
POLL_S = 5.0            # the longest a supervisor's poll waits in the actor (it returns at the first event)
POLL_TICK_S = 0.1       # how often that poll looks whether the child has exited
ORPHAN_S = 600.0        # an ended job's actor waits this long for a service to collect its outcome
FRACTION_STEP = 8       # fractions of a GPU are whole eighths, rounded up (Ray needs finite decimals)
FORWARD_ENV = ("FTLAB_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")  # the service's settings the job sees


def env_resource(service: str) -> str:
    """The custom resource a node advertises for each service environment it can run."""
    return f"ftlab-env-{service}"


def demand(config: dict[str, Any], placement: Placement, cluster_gpus: float,
           service_device: str = "auto") -> float:
    """GPUs (possibly a fraction of one) a job with this resolved config holds while it runs."""
    device = str(config.get("device_type") or service_device or "auto").lower()
    if device == "cpu" or cluster_gpus <= 0:
        return 0.0
    world = int(config.get("world_size") or 1)
    if world > 1:
        return float(world)
    estimate = float(config.get("memory_estimate_gb") or 0.0)
    if placement.device_memory_gb and 0 < estimate < placement.device_memory_gb:
        return math.ceil(estimate / placement.device_memory_gb * FRACTION_STEP) / FRACTION_STEP
    return 1.0


class JobActor:
    """One job inside Ray: its child process, its scratch folder on this node, its events."""

    def __init__(self):
        self.created_at = time.time()  # when Ray had started this actor's worker (bench_placement reads it)
        self._proc = None
        self._events = None
        self._folder, self._lock = "", None
        self._last_poll = time.time()
        self._reap = threading.Lock()  # poll, close and the orphan watch ask the child's state in turn

    def _alive(self) -> bool:
        with self._reap:
            return self._proc.is_alive()

    def start(self, service: str, recipe: str, job_id: str, attempt: int, config: dict, store_config: dict,
              env: dict[str, str]) -> dict[str, Any]:
        import ray
        from services.common.jobs import fork_server as warm_worker
        from services.common.jobs.child import child_main
        from services.common.jobs.scratch import hold_lock, scratch_root, sweep_stale_scratch
        os.environ.update(env)  # this worker process is the job's alone
        # Forked from this worker, which is the job's alone and has already paid the interpreter and
        # the imports: spawn would start a fresh one that re-imports its parent's __main__ (Ray's
        # default_worker.py, i.e. all of Ray), a fork server would start a fresh one too
        # (bench/bench_placement.py measured both). Safe to fork: this process never touches CUDA,
        # and the child uses nothing of Ray's threads (torch's DataLoader forks inside Ray workers
        # the same way). Spawned still: a job that drives Ray itself (the rank 0 of a multi-node
        # training, FTLAB_RAY_NODES), since a forked copy of this worker believes Ray is connected
        # through threads it does not have, and FTLAB_WORKER=spawn.
        spawn = warm_worker.mode() == "spawn" or "FTLAB_RAY_NODES" in env
        ctx = mp.get_context("spawn" if spawn else "fork")
        self._events = ctx.Queue()
        # This node's scratch, locked while the actor lives: what a killed actor (a lost service, a
        # killed worker) leaves behind, the next job starting on the node sweeps.
        sweep_stale_scratch()
        os.makedirs(scratch_root(), exist_ok=True)
        self._folder = tempfile.mkdtemp(prefix=f"ray-{job_id}-", dir=scratch_root())
        self._lock = hold_lock(os.path.join(self._folder, ".lock"))
        workdir = os.path.join(self._folder, "job")
        os.mkdir(workdir)
        self._proc = warm_worker.process(ctx, child_main, name=f"ftlab-{job_id}", service=service,
                                         args=(recipe, job_id, attempt, config, store_config, self._events, workdir))
        started = threading.Event()

        def _run():  # the child's parent-death signal follows this thread: it lives as long as the child
            self._proc.start()
            started.set()
            # waits without reaping: two threads reaping one child race, and the loser reports a
            # wrong exit code (poll, close and the orphan watch reap, in turn: _alive)
            wait([self._proc.sentinel])

        threading.Thread(target=_run, name=f"job-{job_id}", daemon=True).start()
        threading.Thread(target=self._orphan_watch, name="orphan-watch", daemon=True).start()
        started.wait()
        ctx_ = ray.get_runtime_context()
        return {"pid": self._proc.pid, "node_id": ctx_.get_node_id(), "ip": ray.util.get_node_ip_address(),
                "actor_up": self.created_at, "process_started": time.time(), "gpus": devices.granted(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    def poll(self, timeout: float) -> dict[str, Any]:
        """The events the child sent, and whether it lives: returns at the first event or the child's
        exit, else after ``timeout`` (a long poll: one call per event or per ``timeout``, not a stream
        of empty round trips from every running job's supervisor)."""
        self._last_poll = time.time()
        out, deadline = [], time.time() + timeout
        while True:
            try:
                out.append(self._events.get(timeout=max(0.0, min(POLL_TICK_S, deadline - time.time()))))
                while len(out) < 500:
                    out.append(self._events.get_nowait())
                break
            except queue.Empty:
                if out or not self._alive() or time.time() >= deadline:
                    break
        alive = self._alive()
        if not alive:  # what the child sent just before exiting: its queue was flushed when it exited
            try:
                while True:
                    out.append(self._events.get(timeout=0.05))
            except queue.Empty:
                pass
        return {"events": out, "alive": alive, "exitcode": None if alive else self._proc.exitcode}

    def signal(self, sig: int) -> None:
        from services.common.jobs.child import signal_group
        if self._proc is not None and self._proc.pid is not None:
            signal_group(self._proc.pid, sig)

    def close(self) -> None:
        if self._proc is not None and self._alive():
            self.signal(9)
            with self._reap:
                self._proc.join(10)
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _orphan_watch(self) -> None:
        while self._alive() or time.time() - self._last_poll < ORPHAN_S:
            time.sleep(5)
        self.close()
        os._exit(0)


class RayHandle:
    """The service's side of one job's actor: the Process + events-queue interface of LocalHandle."""

    def __init__(self, actor, start_args: tuple | None, wants: str, placed: bool = False, pg=None):
        self.actor, self._start_args, self.wants, self.pg = actor, start_args, wants, pg
        self.placed, self.lost = placed, False
        self._started = None
        self._buffer: list[dict] = []
        self._alive, self._exitcode, self.pid = True, None, None
        if placed:
            self._buffer.append({"type": EventType.LOG.value, "message": "re-attached to the job's Ray actor after a service "
                                                            "restart"})

    def start(self) -> None:
        self._started = self.actor.start.remote(*self._start_args)

    def where(self) -> str:
        return f"Ray actor ({self.wants})"

    def get(self, timeout: float) -> dict[str, Any]:
        import ray
        from ray.exceptions import GetTimeoutError, RayError
        if self._buffer:
            return self._buffer.pop(0)
        if not self._alive:
            raise queue.Empty
        try:
            if not self.placed:
                ready, _ = ray.wait([self._started], timeout=timeout)
                if not ready:
                    raise queue.Empty
                info = ray.get(self._started)
                self.placed, self.pid = True, info["pid"]
                gpus = ",".join(info["gpu_ids"]) or "none"
                return {"type": "placed", "message": f"started by Ray on node {info['ip']} "
                        f"({info['node_id'][:12]}), GPUs {gpus}, CUDA_VISIBLE_DEVICES={info['gpus']!r}, "
                        f"pid {info['pid']}", "info": info}
            state = ray.get(self.actor.poll.remote(POLL_S), timeout=POLL_S + 60)
        except (queue.Empty, GetTimeoutError):
            raise queue.Empty from None
        except RayError as exc:  # the actor (its worker, or its whole node) is gone
            self._alive, self.lost = False, True
            what = "before it started" if not self.placed else "while it ran"
            self._buffer.append({"type": "error", "lost": True,
                                 "message": f"the Ray actor running the job was lost {what} "
                                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"})
            return self._buffer.pop(0)
        self._buffer.extend(state["events"])
        self._alive, self._exitcode = state["alive"], state["exitcode"]
        if self._buffer:
            return self._buffer.pop(0)
        raise queue.Empty

    def is_alive(self) -> bool:
        return self._alive

    @property
    def exitcode(self) -> int | None:
        return self._exitcode

    def signal(self, sig: int) -> None:
        import ray
        if not self.placed or sig == 9:  # still waiting for resources, or SIGKILL: the actor goes
            if self.placed:
                try:
                    ray.get(self.actor.signal.remote(sig), timeout=10)
                except Exception:
                    pass
            self._release()
            return
        try:
            ray.get(self.actor.signal.remote(sig), timeout=30)
        except ray.exceptions.RayError:
            self._release()

    def _release(self) -> None:
        import ray
        ray.kill(self.actor, no_restart=True)
        if self.pg is not None:
            ray.util.remove_placement_group(self.pg)

    def close(self) -> None:
        """Remove the job's scratch folder on its node and release the actor (and its GPUs)."""
        import ray
        try:
            ray.get(self.actor.close.remote(), timeout=30)
        except Exception:  # the actor or its node is gone: nothing left to clean
            pass
        self._release()


class RayLauncher:
    """Jobs as Ray actors; Ray's resources, not ``FTLAB_MAX_RUNNING_JOBS``, limit how many run."""
    limits_running = False

    def __init__(self, service: str, placement: Placement):
        import ray
        self.service, self.placement = service, placement
        if not ray.is_initialized():
            if placement.ray_address:
                ray.init(address=placement.ray_address, namespace=NAMESPACE, log_to_driver=False)
            else:  # a private Ray on this host, which can run every service's environment
                ray.init(namespace=NAMESPACE, include_dashboard=False, log_to_driver=False,
                         resources={env_resource(s): 1000 for s in set(SERVICES) | {service}})
        self._actor_cls = ray.remote(JobActor)

    def warm_up(self) -> threading.Event:
        ready = threading.Event()
        ready.set()
        return ready

    def _name(self, job_id: str, attempt: int) -> str:
        return f"{self.service}.{job_id}.{attempt}"

    def launch(self, job_id: str, kind: str, recipe: str, attempt: int, config: dict, store_config: dict,
               scratch: str) -> RayHandle:
        import ray
        gpus = demand(config, self.placement, ray.cluster_resources().get("GPU", 0.0),
                      os.environ.get("FTLAB_DEVICE", "auto"))
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV)}
        name, cpus, envres = self._name(job_id, attempt), self.placement.job_cpus, env_resource(self.service)
        ranks = self._node_ranks(int(config.get("world_size") or 1), gpus)
        pg, options = None, {}
        if len(ranks) > 1:  # one bundle per node, each on a different node: the nodes of one training
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
            bundles = [{"CPU": cpus, envres: 1, **({"GPU": float(r)} if gpus else {})} for r in ranks]
            pg = placement_group(bundles, strategy="STRICT_SPREAD", name=name, lifetime="detached")
            options = {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)}
            gpus = float(ranks[0]) if gpus else 0.0
            env["FTLAB_RAY_NODES"] = json.dumps({"pg": pg.id.hex(), "ranks": ranks, "bundles": bundles,
                                                 "address": ray.get_runtime_context().gcs_address})
            wants = f"{len(ranks)} nodes ({'+'.join(map(str, ranks))} ranks), {envres}"
        else:
            wants = f"{gpus:g} GPU, {cpus:g} CPU, {envres}"
        if not self._fits(ranks if len(ranks) > 1 else [gpus], bool(gpus)):
            wants += "; no node of the cluster can hold that now: it waits until nodes that can join"
        actor = self._actor_cls.options(
            name=name, namespace=NAMESPACE, lifetime="detached", max_restarts=0, max_concurrency=4,
            num_gpus=gpus, num_cpus=cpus, resources={envres: 1}, **options).remote()
        return RayHandle(actor, (self.service, recipe, job_id, attempt, config, store_config, env), wants, pg=pg)

    def _fits(self, per_node_gpus: list[float], uses_gpus: bool) -> bool:
        """Could the alive nodes running this service hold one bundle each (GPUs and CPUs), were
        they idle? (An autoscaling cluster may still add nodes; the job then waits for them.)"""
        import ray
        free = sorted(((n["Resources"].get("GPU", 0.0), n["Resources"].get("CPU", 0.0)) for n in ray.nodes()
                       if n["Alive"] and env_resource(self.service) in n["Resources"]), reverse=True)
        need = sorted(per_node_gpus, reverse=True)
        return len(need) <= len(free) and all((g >= want or not uses_gpus) and c >= self.placement.job_cpus
                                              for want, (g, c) in zip(need, free))

    def _node_ranks(self, world: int, gpus: float) -> list[int]:
        """Training processes per node: one node unless ``world`` exceeds what a node takes
        (FTLAB_RAY_RANKS_PER_NODE, else the GPUs of the largest node that runs this service)."""
        import ray
        per_node = self.placement.ranks_per_node
        if per_node is None and gpus >= 1:
            per_node = int(max((n["Resources"].get("GPU", 0) for n in ray.nodes()
                                if n["Alive"] and env_resource(self.service) in n["Resources"]), default=0))
        if not per_node or world <= per_node:
            return [world]
        nodes = math.ceil(world / per_node)
        return [per_node] * (nodes - 1) + [world - per_node * (nodes - 1)]

    def reattach(self, job_id: str, attempt: int) -> RayHandle | None:
        """The actor of the job's running attempt after a service restart, or None (it runs nowhere)."""
        import ray
        try:
            actor = ray.get_actor(self._name(job_id, attempt), namespace=NAMESPACE)
        except ValueError:
            return None
        try:
            pg = ray.util.get_placement_group(self._name(job_id, attempt))
        except ValueError:
            pg = None  # a one-node job
        return RayHandle(actor, None, "re-attached", placed=True, pg=pg)
