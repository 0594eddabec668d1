"""The registry-free build and the offline compose override (issue #22), checked without an engine.

- The four Dockerfiles take their bases as build arguments, the registry images as defaults; no
  Dockerfile names a frontend image (`# syntax=`); the CA bundle reaches the build only as a secret.
- docker-compose.offline.yml replaces only the third-party images, each by a stand-in built here,
  and leaves ftlab's services exactly as the CPU stack runs them.
- The S3 stand-in keeps its objects across a restart and a kill -9 (moto alone keeps them in memory).
- The deploy check's generated .env: no placeholder left, free distinct host ports.
The real engine run is tests/deploy/test_engine.py and `make deploy-check`.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.common.contract.settings import SERVICES
from tests.deploy.test_deploy import (CPU_COMPOSE, DEPLOY, DOCKERFILES, GPU_COMPOSE, OFFLINE_COMPOSE,
                                      OFFLINE_DOCKERFILES, ROOT, compose_config)
from tests.s3_server import free_port

REGISTRY_DEFAULTS = {"BASE_IMAGE": {"trainer": "nvidia/cuda:12.8.1-runtime-ubuntu24.04",
                                    "quantizer": "nvidia/cuda:12.8.1-runtime-ubuntu24.04",
                                    "evaluator": "nvidia/cuda:12.8.1-runtime-ubuntu24.04",
                                    "flows": "python:3.11.13-slim-bookworm"},
                     "UV_IMAGE": "ghcr.io/astral-sh/uv:0.9.26"}
THIRD_PARTY = {"minio", "minio-init", "postgres", "prefect-server"}


@pytest.fixture(scope="module")
def cpu_config() -> dict:
    return compose_config([GPU_COMPOSE, CPU_COMPOSE])


@pytest.fixture(scope="module")
def offline_config() -> dict:
    return compose_config([GPU_COMPOSE, CPU_COMPOSE, OFFLINE_COMPOSE])


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_dockerfile_bases_are_build_args(name):
    text = DOCKERFILES[name].read_text()
    head = text[:text.index("\nFROM ")]
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", head, re.M))
    assert args["BASE_IMAGE"] == REGISTRY_DEFAULTS["BASE_IMAGE"][name]
    assert args["UV_IMAGE"] == REGISTRY_DEFAULTS["UV_IMAGE"]
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == ["${UV_IMAGE}", "${BASE_IMAGE}", "${BASE_IMAGE}"], froms   # uv, builder, runtime
    assert "COPY --from=uv /uv" in text
    assert re.search(r"^ARG PYTHON=", text, re.M), "the interpreter: a version uv fetches or a path"


@pytest.mark.parametrize("path", [*DOCKERFILES.values(), *OFFLINE_DOCKERFILES], ids=lambda p: p.name)
def test_no_frontend_image_and_ca_only_as_a_secret(path):
    text = path.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "a # syntax= frontend is a registry image"
    assert not re.search(r"^(COPY|ADD)\b.*(\.crt|\.pem|ca-certificates|ca_bundle)", text, re.M), \
        "the CA bundle must never be copied into an image"
    # every step that downloads Python packages trusts the optional CA secret
    for run in re.findall(r"^RUN\b(?:.*\\\n)*.*$", text, re.M):
        if re.search(r"\bpip install\b", run):
            assert "--mount=type=secret,id=ca_bundle" in run, f"{path.name}: {run[:120]}"


def test_offline_override_replaces_only_third_party_images(offline_config, cpu_config):
    off, cpu = offline_config["services"], cpu_config["services"]
    assert set(off) == set(cpu)
    for name, s in off.items():
        b = s.get("build")
        if name in THIRD_PARTY:
            assert b and b["dockerfile"].startswith("deploy/offline/"), f"{name}: needs a stand-in built here"
            assert s["image"].startswith("ftlab-standin-") and "/" not in s["image"], s["image"]
        else:   # ftlab's own: same image, command, env, volumes, healthcheck, dependencies as the CPU stack
            for key in ("image", "command", "environment", "volumes", "healthcheck", "depends_on", "user",
                        "ports", "restart", "init"):
                assert s.get(key) == cpu[name].get(key), f"{name}.{key} differs from the CPU stack"
            assert b["args"]["BASE_IMAGE"] == "ftlab-base:bookworm" and b["args"]["PYTHON"] == "/usr/bin/python3.11"
        if b:
            assert b.get("network") == "host", f"{name}: builds reach PyPI/Debian through the host network"
            assert [x["source"] for x in b.get("secrets", [])] == ["ca_bundle"], name
    for svc in SERVICES:
        assert off[svc]["build"]["args"]["TORCH_VERSION"] == "2.13.0+cpu", "the wheelhouse's CPU torch"
    # what the stand-ins keep from the real ones: volumes, ports, env, the service names
    for name in ("minio", "postgres", "prefect-server"):
        for key in ("volumes", "ports", "environment"):
            assert off[name].get(key) == cpu[name].get(key), f"{name}.{key}"
    assert offline_config["secrets"]["ca_bundle"]["file"] == "/etc/ssl/certs/ca-certificates.crt"


def test_host_ports_are_configurable(tmp_path):
    env = tmp_path / "ports.env"
    env.write_text((DEPLOY / ".env.example").read_text() + "\nFTLAB_TRAINER_PORT=15061\nFTLAB_PREFECT_PORT=14200\n")
    cfg = compose_config([GPU_COMPOSE], env_file=env)["services"]
    assert [(p["target"], p["published"]) for p in cfg["trainer"]["ports"]] == [(50061, "15061")]
    assert cfg["prefect-server"]["ports"][0]["published"] == "14200"
    assert cfg["prefect-server"]["environment"]["PREFECT_UI_API_URL"] == "http://127.0.0.1:14200/api"


def test_build_script_and_check_parse():
    for script in ("deploy/build-images.sh", "deploy/offline/postgres-entrypoint.sh"):
        out = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    out = subprocess.run([sys.executable, str(ROOT / "deploy/deploy_check.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "down -v" in out.stdout, out.stderr


def test_deploy_check_env_has_secrets_and_free_ports(tmp_path):
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        import deploy_check
    finally:
        sys.path.pop(0)
    path, values = deploy_check.write_env(tmp_path)
    assert not [k for k, v in values.items() if "change-me" in v] and path.stat().st_mode & 0o077 == 0
    ports = [int(values[k]) for k in deploy_check.PORT_VARS]
    assert len(set(ports)) == len(ports) and not {9000, 9001, 4200, 50061, 50062, 50063} & set(ports)
    assert values["PREFECT_AUTH_STRING"].startswith("admin:") and len(values["FTLAB_AUTH_TOKEN"]) >= 32


# ------------------------------------------------------------------ the S3 stand-in keeps its objects

class StandIn:
    def __init__(self, data: Path, port: int):
        self.data, self.port, self.proc = data, port, None

    def start(self):
        (self.data.parent / "ready").unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(DEPLOY / "offline/s3_server.py"), "--port", str(self.port),
                                      "--data", str(self.data), "--sync-s", "0.5", "--ready-flag",
                                      str(self.data.parent / "ready")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while not (self.data.parent / "ready").exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.proc.stdout.read()
            time.sleep(0.1)
        return self

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.port}", region_name="us-east-1",
                            aws_access_key_id="k", aws_secret_access_key="s")

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(30)
        return self.proc.stdout.read()


def test_s3_standin_keeps_objects_across_restarts(tmp_path):
    data, port = tmp_path / "data", free_port()
    s = StandIn(data, port).start()
    try:
        c = s.client()
        c.create_bucket(Bucket="models")
        c.create_bucket(Bucket="empty")
        c.put_object(Bucket="models", Key="m/manifest.json", Body=b"{}")
        c.put_object(Bucket="models", Key="m", Body=b"a key that is also a prefix")
        c.put_object(Bucket="models", Key="gone", Body=b"x")
        c.delete_object(Bucket="models", Key="gone")
        big = c.create_multipart_upload(Bucket="models", Key="big")["UploadId"]
        parts = [{"PartNumber": i, "ETag": c.upload_part(Bucket="models", Key="big", UploadId=big, PartNumber=i,
                                                         Body=bytes([i]) * (5 << 20))["ETag"]} for i in (1, 2)]
        c.complete_multipart_upload(Bucket="models", Key="big", UploadId=big, MultipartUpload={"Parts": parts})
        etags = {o["Key"]: o["ETag"] for o in c.list_objects_v2(Bucket="models")["Contents"]}
        assert etags["big"].endswith('-2"')
    finally:
        assert "mirror written" in s.stop()
    s = StandIn(data, port).start()          # `docker compose restart` / down + up
    try:
        c = s.client()
        assert {b["Name"] for b in c.list_buckets()["Buckets"]} == {"models", "empty"}
        assert c.get_object(Bucket="models", Key="m/manifest.json")["Body"].read() == b"{}"
        assert c.get_object(Bucket="models", Key="m")["Body"].read() == b"a key that is also a prefix"
        assert {o["Key"]: o["ETag"] for o in c.list_objects_v2(Bucket="models")["Contents"]} == etags
        assert c.get_object(Bucket="models", Key="big")["Body"].read() == bytes([1]) * (5 << 20) + bytes([2]) * (5 << 20)
        c.put_object(Bucket="models", Key="late", Body=b"y")
        time.sleep(2)                         # a few sync rounds, then a crash
    finally:
        s.stop(signal.SIGKILL)
    s = StandIn(data, port).start()
    try:
        assert s.client().get_object(Bucket="models", Key="late")["Body"].read() == b"y"
    finally:
        s.stop()


# ------------------------------------------------------------------ what the images install

def test_installed_package_carries_every_data_file(tmp_path):
    """The images install ftlab as a wheel (not editable): every non-Python file of the packages
    must be in it. services/trainer/qwen3_configs.yaml was missing, so `ftlab run --dry-run` in the
    worker container and the trainer's memory estimate failed with FileNotFoundError."""
    import shutil
    import zipfile
    # what the image build sees: the tracked files only (no egg-info, whose SOURCES.txt would
    # smuggle the data files in, as it does in a developer's checkout)
    tracked = subprocess.run(["git", "ls-files", "pyproject.toml", "README.md", "ftlab", "services", "flows"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    src = tmp_path / "src"
    for f in tracked:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    names = set(zipfile.ZipFile(next(tmp_path.glob("ftlab-*.whl"))).namelist())
    data = [f for f in tracked if f.startswith(("ftlab/", "services/", "flows/")) and not f.endswith((".py", ".pyi"))]
    assert data and not [f for f in data if f not in names], [f for f in data if f not in names]
