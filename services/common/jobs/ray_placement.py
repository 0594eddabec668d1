"""Jobs placed by Ray (``FTLAB_PLACEMENT=ray``): each job is one Ray *task* that asks for what the
job needs, and the job's child process runs inside it, where Ray put it.

What a job asks for (:func:`demand`): GPUs — a training job's ``world_size``, one for any other
job, none where the job runs on the CPU (the config's ``device_type``, else the service's
``FTLAB_DEVICE``) or the cluster has no GPUs — or a fraction of one GPU where the door's memory
estimate (``memory_estimate_gb``) shows that several jobs fit one device of
``FTLAB_DEVICE_MEMORY_GB``; ``FTLAB_RAY_JOB_CPUS`` CPUs; and one unit of the custom resource
``ftlab-env-<service>``, which only the nodes that can run the service's environment advertise
(``ray start --resources '{"ftlab-env-trainer": 1000}'``). Ray queues the task until a node has
all of it free (a 4-GPU job waits for 4 GPUs on one node: a task never spans nodes) and sets
``CUDA_VISIBLE_DEVICES`` to the GPUs it granted; the child inherits it, so nothing uses a GPU it
was not given.

Why tasks, not one actor per job (docs/BENCHMARKS.md "Placement by Ray"): Ray starts a fresh worker
process for every actor (an interpreter importing Ray, seconds), and a GPU stayed idle for that
long at every hand-over; a task runs on a worker Ray keeps warm and reuses (``max_calls=0``: Ray
would otherwise retire a GPU task's worker after one call, to free the GPU memory it holds — ours
never touch CUDA, their forked children do), and :meth:`RayLauncher.warm_up` starts those workers
on every node of the service before the first job.

Tasks are owned by whoever submits them, and Ray kills a task whose owner died: the service's
tasks are submitted by its :class:`Dispatcher`, one *detached* actor per service named
``ftlab-dispatch.<service>`` in the ``ftlab`` namespace, on the head node. It holds each
running job's events until the service polls them, and the signals for it until the task picks
them up; a service that crashed finds its running jobs there again on restart
(:meth:`RayLauncher.reattach`), and a job attempt's name ``<service>.<job_id>.<attempt>`` holds one
copy of it. The task (:func:`run_job`) starts the same child as the local launcher
(``job_context.child_main``, forked from the task's worker, own process group) and forwards its
events; the child dies with its worker (the pid watchdog of warm_worker), so a lost node or a
killed worker never leaves a copy running; a job whose task was lost is re-queued by the runtime
(at most ``max_attempts`` starts) and says why. An ended job nobody collected for ``ORPHAN_S`` is
forgotten (its GPUs were freed when its task ended).
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
POLL_S = 5.0            # the longest a supervisor's poll (or a task's wait for signals) waits in the dispatcher
POLL_TICK_S = 0.1       # how often a task looks whether its child has exited
ORPHAN_S = 600.0        # an ended job's outcome waits this long in the dispatcher for a service to collect it
WARM_S = 120.0          # the longest the service waits for its warm workers before it places jobs anyway
FRACTION_STEP = 8       # fractions of a GPU are whole eighths, rounded up (Ray needs finite decimals)
FORWARD_ENV = ("FTLAB_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")  # the service's settings the job sees


def env_resource(service: str) -> str:
    """The custom resource a node advertises for each service environment it can run."""
    return f"ftlab-env-{service}"


def dispatcher_name(service: str) -> str:
    return f"ftlab-dispatch.{service}"


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


def _job_modules():
    """What a task needs to start a job: imported once per (reused) worker, and by the warm-up."""
    import ray
    from services.common.jobs import fork_server as warm_worker
    from services.common.jobs.child import child_main, signal_group
    from services.common.jobs import scratch
    return ray, warm_worker, child_main, signal_group, scratch


def warm_task(dispatcher, key: str, workers: int) -> int:
    """Holds its worker until ``workers`` warm tasks run on the node (so that many distinct workers
    start), having imported what a job's task needs."""
    ray = _job_modules()[0]
    ray.get(dispatcher.arrive.remote(key, workers, 30.0))
    return os.getpid()


def run_job(dispatcher, name: str, service: str, recipe: str, job_id: str, attempt: int, config: dict,
            store_config: dict, env: dict[str, str]) -> int | None:
    """One job as a Ray task: its scratch folder on this node, its child, its events to the dispatcher."""
    task_up = time.time()  # when Ray had the task running on a worker (bench_placement reads it)
    ray, warm_worker, child_main, signal_group, scratch = _job_modules()
    # Forked from this worker, which has already paid the interpreter and the imports (spawn would
    # start a fresh one that re-imports its parent's __main__, Ray's default_worker.py, i.e. all of
    # Ray). Safe to fork: this process never touches CUDA, and the child uses nothing of Ray's
    # threads (torch's DataLoader forks inside Ray workers the same way). Spawned still: a job that
    # drives Ray itself (the rank 0 of a multi-node training, FTLAB_RAY_NODES), since a forked copy of
    # this worker believes Ray is connected through threads it does not have, and FTLAB_WORKER=spawn.
    spawn = env.get("FTLAB_WORKER", "").strip().lower() == "spawn" or "FTLAB_RAY_NODES" in env
    ctx = mp.get_context("spawn" if spawn else "fork")
    events = ctx.Queue()
    # This node's scratch, locked while the job runs: what a killed worker (a lost node) leaves
    # behind, the next job starting on the node sweeps.
    scratch.sweep_stale_scratch()
    os.makedirs(scratch.scratch_root(), exist_ok=True)
    folder = tempfile.mkdtemp(prefix=f"ray-{job_id}-", dir=scratch.scratch_root())
    lock = scratch.hold_lock(os.path.join(folder, ".lock"))
    workdir = os.path.join(folder, "job")
    os.mkdir(workdir)
    proc = warm_worker.process(ctx, child_main, name=f"ftlab-{job_id}", service=service, extra_env=env,
                               args=(recipe, job_id, attempt, config, store_config, events, workdir))
    started = threading.Event()

    def _run():  # the child's parent-death signal follows this thread: it lives as long as the child
        proc.start()
        started.set()
        wait([proc.sentinel])  # without reaping: only the loop below reaps (two reapers race for the exit code)

    threading.Thread(target=_run, name=f"job-{job_id}", daemon=True).start()
    started.wait()
    ctx_ = ray.get_runtime_context()
    info = {"pid": proc.pid, "node_id": ctx_.get_node_id(), "ip": ray.util.get_node_ip_address(),
            "task_up": task_up, "process_started": time.time(), "gpus": devices.granted(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    done = threading.Event()

    def _signals():  # the service's cancel reaches the child through the dispatcher (long poll)
        while not done.is_set():
            for sig in ray.get(dispatcher.signals.remote(name, POLL_S)) or ():
                if not done.is_set():
                    signal_group(proc.pid, sig)

    pending: list[dict] = []
    try:
        ray.get(dispatcher.report.remote(name, [], info))
        threading.Thread(target=_signals, name=f"signals-{job_id}", daemon=True).start()
        while True:
            try:
                pending.append(events.get(timeout=POLL_TICK_S))
                while len(pending) < 500:
                    pending.append(events.get_nowait())
            except queue.Empty:
                pass
            if not proc.is_alive():
                try:  # what the child sent just before exiting: its queue was flushed when it exited
                    while True:
                        pending.append(events.get(timeout=0.05))
                except queue.Empty:
                    break
            if pending:
                ray.get(dispatcher.report.remote(name, pending))
                pending = []
    finally:
        done.set()
        if proc.is_alive():  # the dispatcher is gone (its tasks go with it), or Ray cancelled this task
            signal_group(proc.pid, 9)
            proc.join(10)
        shutil.rmtree(folder, ignore_errors=True)
        if lock is not None:
            lock.close()
    ray.get(dispatcher.report.remote(name, pending, None, proc.exitcode, True))
    return proc.exitcode


class _Job:
    def __init__(self):
        self.ref = None
        self.info: dict | None = None
        self.info_sent = False
        self.events: list[dict] = []
        self.signals: list[int] = []
        self.ended, self.exitcode, self.error = False, None, None
        self.last_poll = time.time()


class Dispatcher:
    """One per service (a detached, named actor): submits the service's job tasks, so they outlive the
    service's own process, and relays between them and the service."""

    def __init__(self):
        self._jobs: dict[str, _Job] = {}
        self._arrived: dict[str, int] = {}
        self._cond = threading.Condition()
        import ray
        self._run_job = ray.remote(max_retries=0, max_calls=0)(run_job)
        threading.Thread(target=self._forget_orphans, name="orphans", daemon=True).start()

    def _me(self):
        import ray
        return ray.get_runtime_context().current_actor

    # -- the service's side

    def submit(self, name: str, options: dict, args: tuple) -> bool:
        """Submits the job attempt ``name``; False when that name runs already (one copy of a job)."""
        with self._cond:
            if name in self._jobs:
                return False
            job = self._jobs[name] = _Job()
            job.ref = self._run_job.options(**options).remote(self._me(), name, *args)
        threading.Thread(target=self._watch, args=(name, job), name=f"watch-{name}", daemon=True).start()
        return True

    def warm(self, nodes: list[tuple[str, int, bool]]) -> list[int]:
        """Starts ``workers`` Ray workers of this dispatcher on each node, and imports there what a
        job's task needs: the first jobs find them warm as later ones do. On a GPU node they are
        GPU workers (they ask for a sliver of one): Ray reuses a worker only for tasks of the same kind."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        task = ray.remote(warm_task)
        refs = []
        for node, n, gpu in nodes:
            key = f"warm-{node}-{time.time()}"  # the node's n warm tasks wait for each other under it
            refs += [task.options(num_cpus=0, num_gpus=1 / FRACTION_STEP if gpu else 0, max_retries=0,
                                  scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
                                      self._me(), key, n) for _ in range(n)]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=WARM_S)
        return sorted({ray.get(r) for r in ready}) if refs else []

    def known(self, name: str) -> bool:
        with self._cond:
            return name in self._jobs

    def poll(self, name: str, timeout: float) -> dict[str, Any]:
        """What happened to the job since the last poll: returns at the first news, else after ``timeout``."""
        with self._cond:
            job = self._jobs.get(name)
            if job is None:
                return {"gone": True}
            job.last_poll = time.time()
            self._cond.wait_for(lambda: job.events or job.ended or (job.info and not job.info_sent), timeout)
            info = job.info if job.info and not job.info_sent else None
            job.info_sent = job.info_sent or info is not None
            out = {"info": info, "events": job.events, "ended": job.ended, "exitcode": job.exitcode,
                   "error": job.error, "gone": False}
            job.events = []
            return out

    def signal(self, name: str, sig: int) -> None:
        """To the job's child; a job Ray has not started yet is taken out of Ray's queue instead."""
        import ray
        with self._cond:
            job = self._jobs.get(name)
            if job is None or job.ended:
                return
            if job.info is None:
                ray.cancel(job.ref, force=False)
                return
            job.signals.append(sig)
            self._cond.notify_all()

    def forget(self, name: str) -> None:
        import ray
        with self._cond:
            job = self._jobs.pop(name, None)
            self._cond.notify_all()
        if job is not None and not job.ended:
            ray.cancel(job.ref, force=True)

    # -- the task's side

    def report(self, name: str, events: list[dict], info: dict | None = None, exitcode: int | None = None,
               ended: bool = False) -> None:
        with self._cond:
            job = self._jobs.get(name)
            if job is None:
                return
            job.events.extend(events)
            if info is not None:
                job.info = info
            if exitcode is not None or ended:
                job.ended, job.exitcode = True, exitcode
            self._cond.notify_all()

    def signals(self, name: str, timeout: float) -> list[int] | None:
        """The signals the service sent the job (a long poll); None once the job is gone."""
        with self._cond:
            job = self._jobs.get(name)
            if job is None or job.ended:
                return None
            self._cond.wait_for(lambda: job.signals or job.ended or name not in self._jobs, timeout)
            out, job.signals = job.signals, []
            return out

    def arrive(self, key: str, workers: int, timeout: float) -> None:
        with self._cond:
            self._arrived[key] = self._arrived.get(key, 0) + 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._arrived[key] >= workers, timeout)

    # -- its own

    def _watch(self, name: str, job: _Job) -> None:
        import ray
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError
        error = None
        try:
            ray.get(job.ref)
        except TaskCancelledError:
            pass  # the service cancelled it before Ray started it
        except RayTaskError as exc:  # our task's own code failed (not the job's recipe: that is the child)
            error = {"type": "error", "message": f"the Ray task of the job failed: {str(exc).splitlines()[0][:300]}"}
        except RayError as exc:  # its worker, or its whole node, is gone
            what = "before it started" if job.info is None else "while it ran"
            error = {"type": "error", "lost": True, "message": f"the Ray worker running the job was lost {what} "
                     f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"}
        with self._cond:
            if not job.ended:
                job.ended, job.error = True, error
            self._cond.notify_all()

    def _forget_orphans(self) -> None:
        while True:
            time.sleep(30)
            with self._cond:
                for name in [n for n, j in self._jobs.items() if j.ended and time.time() - j.last_poll > ORPHAN_S]:
                    del self._jobs[name]


class RayHandle:
    """The service's side of one job's task: the Process + events-queue interface of LocalHandle."""

    def __init__(self, dispatcher, name: str, submit: tuple | None, wants: str, placed: bool = False, pg=None):
        self.dispatcher, self.name, self._submit, self.wants, self.pg = dispatcher, name, submit, wants, pg
        self.placed, self.lost = placed, False
        self._buffer: list[dict] = []
        self._alive, self._exitcode, self.pid = True, None, None
        if placed:
            self._buffer.append({"type": EventType.LOG.value, "message": "re-attached to the job's Ray task after a service "
                                                            "restart"})

    def start(self) -> None:
        import ray
        try:
            if not ray.get(self.dispatcher.submit.remote(self.name, *self._submit), timeout=60):
                self._alive = False
                self._buffer.append({"type": "error", "message": f"the job attempt {self.name} runs in Ray already"})
        except ray.exceptions.RayError as exc:  # the dispatcher is gone: the next launch makes a new one
            self._alive, self.lost = False, True
            self._buffer.append({"type": "error", "lost": True, "message": "the service's Ray dispatcher did not take "
                                 f"the job ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"})

    def where(self) -> str:
        return f"Ray task ({self.wants})"

    def get(self, timeout: float) -> dict[str, Any]:
        import ray
        from ray.exceptions import GetTimeoutError, RayError
        if self._buffer:
            return self._buffer.pop(0)
        if not self._alive:
            raise queue.Empty
        try:
            # a long poll, however short ``timeout``: it returns at the first news (a cancel does not
            # wait for it), and a queued job costs no stream of calls while Ray holds it
            state = ray.get(self.dispatcher.poll.remote(self.name, POLL_S), timeout=POLL_S + 60)
        except GetTimeoutError:
            raise queue.Empty from None
        except RayError as exc:  # the dispatcher (and the tasks it owned) is gone
            state = {"gone": True, "why": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        if state["gone"]:
            self._alive, self.lost = False, True
            what = "before it started" if not self.placed else "while it ran"
            return {"type": "error", "lost": True, "message": f"the Ray task running the job was lost {what} "
                    f"(the service's Ray dispatcher lost it: {state.get('why', 'not there')})"}
        if state["info"] is not None and not self.placed:
            info = state["info"]
            self.placed, self.pid = True, info["pid"]
            gpus = ",".join(info["gpu_ids"]) or "none"
            self._buffer.append({"type": "placed", "message": f"started by Ray on node {info['ip']} "
                                 f"({info['node_id'][:12]}), GPUs {gpus}, CUDA_VISIBLE_DEVICES={info['gpus']!r}, "
                                 f"pid {info['pid']}", "info": info})
        self._buffer.extend(state["events"])
        if state["ended"]:
            self._alive, self._exitcode = False, state["exitcode"]
            if state["error"]:
                self.lost = bool(state["error"].get("lost"))
                self._buffer.append(state["error"])
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
        try:
            ray.get(self.dispatcher.signal.remote(self.name, sig), timeout=30)
        except ray.exceptions.RayError:
            pass  # the dispatcher is gone, and its tasks with it

    def close(self) -> None:
        """The dispatcher forgets the job (its task removed the scratch folder and freed its GPUs when it
        ended); a multi-node training's reserved nodes are released."""
        import ray
        try:
            ray.get(self.dispatcher.forget.remote(self.name), timeout=30)
        except Exception:  # the dispatcher is gone: nothing left to release there
            pass
        if self.pg is not None:
            ray.util.remove_placement_group(self.pg)


class RayLauncher:
    """Jobs as Ray tasks; Ray's resources, not ``FTLAB_MAX_RUNNING_JOBS``, limit how many run."""
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
        self._dispatcher = self._get_dispatcher()
        ray.get(self._dispatcher.known.remote(""))  # a dispatcher that cannot start fails the service here

    def _get_dispatcher(self):
        """The service's dispatcher, made if there is none (the first start, or the last one was lost)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        # on the head node (soft: elsewhere only where there is no head), which lives as long as the
        # cluster: the jobs' tasks die with their owner, so it must not go with a worker node (a
        # driver's "own" node is any raylet on its host, which a test saw removed)
        head = next((n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]),
                    ray.get_runtime_context().get_node_id())
        return ray.remote(Dispatcher).options(
            name=dispatcher_name(self.service), namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
            num_cpus=0, max_restarts=0, max_concurrency=1000,
            scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=True)).remote()

    def warm_up(self) -> threading.Event:
        """Set once every node that runs this service has as many warm Ray workers as jobs it can
        run at once (its GPUs, else its CPUs over ``FTLAB_RAY_JOB_CPUS``), or after ``WARM_S``:
        the first jobs then start as fast as the later ones (the runtime places none before)."""
        import ray
        ready = threading.Event()
        nodes = []
        for n in ray.nodes():
            res = n["Resources"]
            if n["Alive"] and env_resource(self.service) in res:
                slots = int(res.get("GPU", 0)) or int(res.get("CPU", 0) // max(self.placement.job_cpus, 1e-9))
                nodes.append((n["NodeID"], max(1, min(slots, int(res.get("CPU", 1)) or 1)), res.get("GPU", 0) > 0))

        def _warm():
            try:
                ray.get(self._dispatcher.warm.remote(nodes), timeout=WARM_S + 30)
            except Exception:  # a node went away meanwhile: jobs start their own workers
                pass
            ready.set()
        threading.Thread(target=_warm, name="ray-warm-up", daemon=True).start()
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
        options |= {"num_gpus": gpus, "num_cpus": cpus, "resources": {envres: 1}}
        self._dispatcher = self._get_dispatcher()  # the same actor, unless it was lost
        return RayHandle(self._dispatcher, name, (options, (self.service, recipe, job_id, attempt, config,
                                                            store_config, env)), wants, pg=pg)

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
        """The task of the job's running attempt after a service restart, or None (it runs nowhere)."""
        import ray
        if not ray.get(self._dispatcher.known.remote(self._name(job_id, attempt))):
            return None
        try:
            pg = ray.util.get_placement_group(self._name(job_id, attempt))
        except ValueError:
            pg = None  # a one-node job
        return RayHandle(self._dispatcher, self._name(job_id, attempt), None, "re-attached", placed=True, pg=pg)
