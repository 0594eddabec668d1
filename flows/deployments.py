"""Deployments of the experiment flows, so a GPU host triggers a phase with
``prefect deployment run 'ftlab-experiment/phase3'``. The same list is in ``prefect.yaml`` (for
``prefect deploy --all``; a test keeps the two equal). Without a worker,
``python -m flows.deployments serve`` serves them from this process; with the compose stack's
process worker, ``python -m flows.deployments deploy`` registers them on its work pool; the worker
runs them from ``--code-dir`` (default: the current directory — a checkout, or /app in the flows
image), exactly as ``prefect deploy --all`` does. Local runs (``ftlab run``) stay on ephemeral
Prefect and need none of this.

``deploy`` also registers :data:`ZOMBIE_AUTOMATION`, Prefect's own answer to a flow run whose
process died with its worker (a container restart, a host reboot, an OOM kill): every flow run
sends a heartbeat event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (the compose worker
sets 30); one silent for :data:`ZOMBIE_AFTER_S` is set Crashed by the server. Without it such a
run stays Running forever. Its rerun then skips the committed steps and finds its running jobs
again by their request ids."""
from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from flows.experiment import shipped_names
from flows.orchestrator import evaluate_missing_flow
from flows.pipeline import experiment_flow
from flows.verify import verify_flow

WORK_POOL = "ftlab-process"   # the compose stack's process worker (docker-compose.gpu.yml)
ALL_TASKS = ["ai2_arc", "squad_v2", "OpenMathInstruct-2"]
ZOMBIE_AUTOMATION = "ftlab: crash flow runs without heartbeats"
# Four missed heartbeats at the compose worker's 30 s (Prefect's minimum): a busy host delays one,
# never four, and a dead run is marked within about two minutes.
ZOMBIE_AFTER_S = 120


def deployments() -> list[dict]:
    """name, entrypoint, flow, parameters, description of every deployment."""
    out = [{"name": name, "entrypoint": "flows/pipeline.py:experiment_flow", "flow": experiment_flow,
            "parameters": {"experiment": name}, "description": f"ftlab run {name}"} for name in shipped_names()]
    out.append({"name": "evaluate-missing", "entrypoint": "flows/orchestrator.py:evaluate_missing_flow",
                "flow": evaluate_missing_flow, "parameters": {"tasks": ALL_TASKS, "limit": 200},
                "description": "evaluate every model lacking an evaluation (the study's orchestrator)"})
    out.append({"name": "verify", "entrypoint": "flows/verify.py:verify_flow", "flow": verify_flow,
                "parameters": {"targets": []},
                "description": "ftlab verify (re-hash storage against the manifests; fails when anything is not intact)"})
    return out


def ensure_zombie_automation(after_s: float = ZOMBIE_AFTER_S):
    """Create (or replace) the automation that sets a flow run Crashed when its heartbeats stop
    for ``after_s`` seconds (Prefect's documented recipe for zombie flow runs: a proactive event
    trigger per flow run). Idempotent: every ``deploy`` leaves exactly one."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    try:
        Automation.read(name=ZOMBIE_AUTOMATION).delete()
    except ValueError:   # not there yet
        pass
    return Automation(
        name=ZOMBIE_AUTOMATION,
        description="A flow run whose process died with its worker (restart, reboot, OOM) is Crashed, not Running forever",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed", "prefect.flow-run.Cancelling",
                    "prefect.flow-run.Paused"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=after_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {after_s:.0f} s: its process died (worker restarted?)")],
    ).create()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.deployments", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["list", "serve", "deploy"])
    p.add_argument("--work-pool", default=WORK_POOL)
    p.add_argument("--code-dir", default=".", help="where the worker finds this repository (default: here)")
    args = p.parse_args(argv)
    items = deployments()
    if args.action == "list":
        for d in items:
            print(f"{d['flow'].name}/{d['name']:18s} {d['entrypoint']:42s} {d['parameters']}")
        return 0
    if args.action == "serve":
        from prefect import serve
        serve(*[d["flow"].to_deployment(name=d["name"], parameters=d["parameters"], description=d["description"])
                for d in items])
        return 0
    from pathlib import Path
    ensure_zombie_automation()
    code_dir = str(Path(args.code_dir).resolve())
    for d in items:  # deploy: the code is where the worker runs (checkout or image), nothing to build or push
        d["flow"].from_source(source=code_dir, entrypoint=d["entrypoint"]).deploy(
            name=d["name"], work_pool_name=args.work_pool, parameters=d["parameters"],
            description=d["description"], build=False, push=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
