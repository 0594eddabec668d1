"""The stack's MLflow server, its Ray layout and the worker's heartbeats (issues 22, 23, 26),
checked without an engine: the merged compose config through the real Compose binary, the MLflow
image's Dockerfile through hadolint, its start script's door. The engine run is `make deploy-check`
(docs/DEPLOY.md section 12)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from flows.deployments import ZOMBIE_AFTER_S
from services.common.contract.settings import SERVICES
from services.common.jobs.ray_placement import env_resource
from tests.deploy.test_deploy import (CPU_COMPOSE, DEPLOY, ENV_EXAMPLE, GPU_COMPOSE, OFFLINE_COMPOSE, ROOT,
                                      compose, compose_config, tool)

RAY_COMPOSE = ROOT / "docker-compose.ray.yml"
MLFLOW_DOCKERFILE = DEPLOY / "Dockerfile.mlflow"


@pytest.fixture(scope="module")
def gpu() -> dict:
    return compose_config([GPU_COMPOSE])["services"]


def test_mlflow_server_runs_in_postgres_and_s3_behind_auth(gpu):
    m = gpu["mlflow"]
    assert m["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert m["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    env = m["environment"]
    assert env["POSTGRES_HOST"] == "postgres" and env["POSTGRES_USER"] == gpu["postgres"]["environment"]["POSTGRES_USER"]
    assert env["POSTGRES_PASSWORD"] == gpu["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000" and env["FTLAB_MLFLOW_BUCKET"] == "mlflow"
    assert env["AWS_ACCESS_KEY_ID"] == gpu["trainer"]["environment"]["FTLAB_S3_ACCESS_KEY"]
    assert [(p["target"], p["host_ip"]) for p in m["ports"]] == [(5000, "127.0.0.1")]
    assert "5000/health" in " ".join(m["healthcheck"]["test"])
    assert m["image"].startswith("ftlab-mlflow:") and m["build"]["dockerfile"] == "deploy/Dockerfile.mlflow"


def test_every_ftlab_process_tracks_into_the_stacks_mlflow(gpu, tmp_path):
    for name in (*SERVICES, "prefect-worker"):
        env = gpu[name]["environment"]
        assert env["FTLAB_TRACKING_URI"] == "http://mlflow:5000", name
        assert env["MLFLOW_TRACKING_USERNAME"] == gpu["mlflow"]["environment"]["MLFLOW_TRACKING_USERNAME"], name
        assert env["MLFLOW_TRACKING_PASSWORD"] == gpu["mlflow"]["environment"]["MLFLOW_TRACKING_PASSWORD"], name
    assert gpu["prefect-worker"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    # an empty FTLAB_TRACKING_URI in .env still turns tracking off (compose's `-`, not `:-`)
    off = tmp_path / "off.env"
    off.write_text(re.sub(r"^FTLAB_TRACKING_URI=.*$", "FTLAB_TRACKING_URI=", ENV_EXAMPLE.read_text(), flags=re.M))
    assert compose_config([GPU_COMPOSE], env_file=off)["services"]["trainer"]["environment"]["FTLAB_TRACKING_URI"] == ""


def test_compose_refuses_to_start_without_the_mlflow_password(tmp_path):
    env = tmp_path / "no-mlflow.env"
    env.write_text(re.sub(r"^MLFLOW_TRACKING_PASSWORD=.*\n", "", ENV_EXAMPLE.read_text(), flags=re.M))
    out = compose("config", "-q", env_file=env)
    assert out.returncode != 0 and "MLFLOW_TRACKING_PASSWORD" in out.stderr, out.stderr


def test_worker_heartbeats_fit_the_zombie_automation(gpu):
    freq = int(gpu["prefect-worker"]["environment"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"])
    assert freq >= 30, "Prefect's minimum"
    assert ZOMBIE_AFTER_S >= 3 * freq, "a run is Crashed only after several missed heartbeats, never one late"


def test_mlflow_image_bases_are_build_args_and_lint_clean():
    text = MLFLOW_DOCKERFILE.read_text()
    head = text[:text.index("\nFROM ")]
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", head, re.M))
    assert args == {"BASE_IMAGE": "python:3.11.13-slim-bookworm", "UV_IMAGE": "ghcr.io/astral-sh/uv:0.9.26"}
    assert re.findall(r"^FROM\s+(\S+)", text, re.M) == ["${UV_IMAGE}", "${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert '"mlflow[auth]==3.17.2"' in text, "the same MLflow as the tracking extra, with the auth app's deps"
    assert "--mount=type=secret,id=ca_bundle" in text and "# syntax" not in text
    assert re.findall(r"^USER\s+(\S+)", text, re.M)[-1] == "10001:10001"
    # what it COPYs from the context passes the allow-list .dockerignore (the first engine run's failure)
    allowed = [ln[1:].strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.startswith("!")]
    for src in re.findall(r"^COPY\s+(?!--from)(\S+)\s+\S+$", text, re.M):
        assert any(src.startswith(a) for a in allowed), f"{src} is not in the build context"
    out = subprocess.run([tool("hadolint"), "--no-color", "--config", str(DEPLOY / ".hadolint.yaml"), str(MLFLOW_DOCKERFILE)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_offline_mlflow_builds_on_the_debian_base():
    m = compose_config([GPU_COMPOSE, CPU_COMPOSE, OFFLINE_COMPOSE])["services"]["mlflow"]
    assert m["build"]["args"] == {"BASE_IMAGE": "ftlab-base:bookworm", "UV_IMAGE": "ftlab-uv:0.9.26",
                                  "PYTHON": "/usr/bin/python3.11"}
    assert m["build"]["network"] == "host"


def test_mlflow_start_reports_every_missing_setting_at_once():
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent"}
    out = subprocess.run([sys.executable, str(DEPLOY / "mlflow/start.py")], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    for var in ("POSTGRES_PASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_S3_ENDPOINT_URL", "FTLAB_MLFLOW_BUCKET"):
        assert var in out.stdout, out.stdout


def test_ray_layout_joins_every_service_as_a_node_of_its_environment(tmp_path):
    env = tmp_path / "ray.env"
    env.write_text(ENV_EXAMPLE.read_text() + "\nFTLAB_RAY_HEAD_IMAGE=ftlab-trainer:0.1.0-cpu\n")
    cfg = compose_config([GPU_COMPOSE, CPU_COMPOSE, OFFLINE_COMPOSE, RAY_COMPOSE], env_file=env)["services"]
    head = cfg["ray-head"]
    assert not head.get("ports"), "Ray's ports have no auth: nothing of the head is published"
    assert "--head" in head["command"] and "--num-gpus=0" in head["command"] and head["healthcheck"]["test"]
    assert head["image"] == "ftlab-trainer:0.1.0-cpu"
    for svc in SERVICES:
        s = cfg[svc]
        e = s["environment"]
        assert e["FTLAB_PLACEMENT"] == "ray" and e["FTLAB_RAY_ADDRESS"] == "ray-head:6379", svc
        # the resource the node advertises is the one ray_placement asks for
        script = s["entrypoint"][2].replace("$$", "$").replace("$FTLAB_RAY_SERVICE", e["FTLAB_RAY_SERVICE"])
        assert f'\\"{env_resource(svc)}\\": 1000' in script, script
        assert script.rstrip().endswith('exec "$@"'), "the command starts the service after the join"
        # an entrypoint set in compose clears the image's CMD: `exec "$@"` would exec nothing and the
        # container exit 0 after the join (the first engine run found it), so the service names it again
        cmd = re.search(r"^CMD (\[.*\])$", (DEPLOY / f"Dockerfile.{svc}").read_text(), re.M).group(1)
        assert s.get("command") == json.loads(cmd), svc
        assert s["depends_on"]["ray-head"]["condition"] == "service_healthy", svc
        assert s["depends_on"]["minio"]["condition"] == "service_healthy", "the GPU file's dependencies stay"
    # without the Ray file the stack is the local layout
    assert compose_config([GPU_COMPOSE])["services"]["trainer"]["environment"]["FTLAB_PLACEMENT"] == "local"
