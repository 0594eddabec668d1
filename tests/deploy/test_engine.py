"""On a real Docker engine, in `make test` (issue #22's fast part; the full run is `make deploy-check`):
the Debian base made without any registry, the trainer image built on it exactly as the deploy
check builds it (deploy/build-images.sh), and a container of it answering gRPC health as the
image's HEALTHCHECK asks, as the non-root user.

Needs root, Debian's docker.io (dockerd; started here when none runs, stopped again) and
debootstrap: .ci/run installs them. Skipped, saying why, where they are missing.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy"))
import deploy_check  # noqa: E402

sys.path.pop(0)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("docker") or not shutil.which("debootstrap")
    or not (shutil.which("dockerd") or subprocess.run(["docker", "info"], capture_output=True).returncode == 0),
    reason="needs root, a docker CLI with dockerd (apt-get install docker.io) and debootstrap")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    work = tmp_path_factory.mktemp("engine")
    dockerd = deploy_check.ensure_engine(work)
    env = deploy_check.compose_env(work)
    yield env
    if dockerd is not None:
        dockerd.terminate()
        dockerd.wait(60)


def docker(*args: str, env=None, timeout=120, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert not check or p.returncode == 0, f"docker {' '.join(args)}: {p.stdout[-2000:]}{p.stderr[-2000:]}"
    return p


def test_trainer_image_builds_without_a_registry_and_serves_health(engine):
    build = subprocess.run([str(ROOT / "deploy/build-images.sh"), "trainer"], cwd=ROOT, env=engine,
                           capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-5000:]
    built = re.search(r"image (\S+) \(trainer\): \d+ s", build.stderr)
    assert built, build.stderr[-3000:]
    image = built.group(1)
    name = f"ftlab-engine-test-{secrets.token_hex(3)}"
    docker("run", "-d", "--name", name, "-e", "FTLAB_STORAGE=local", "-e", "FTLAB_LOCAL_ROOT=/data/tmp/store",
           "-e", "FTLAB_DEVICE=cpu", image)
    try:
        deadline = time.monotonic() + 300
        while True:   # the image's own HEALTHCHECK command
            p = docker("exec", name, "ftlab-healthcheck", "--service", "trainer", "--address", "127.0.0.1:50061",
                       check=False)
            if p.returncode == 0:
                break
            running = docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            assert running == "true" and time.monotonic() < deadline, docker("logs", name, check=False).stderr[-3000:]
            time.sleep(3)
        assert "SERVING" in p.stdout
        assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
        versions = docker("exec", name, "python", "-c",
                          "import sys, torch; print(sys.version.split()[0], torch.__version__)").stdout.split()
        assert versions[0].startswith("3.11.") and versions[1].endswith("+cpu"), versions
    finally:
        docker("rm", "-f", name, check=False)
