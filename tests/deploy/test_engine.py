"""The registry-free image build (issue #22), in two forms.

The long form, ``make check-images`` (never part of `make test`: 4-5 minutes on a cold engine):
on a real Docker engine, the Debian base made without any registry, the trainer image built on it
exactly as the deploy check builds it (deploy/build-images.sh), and a container of it answering
gRPC health as the image's HEALTHCHECK asks, as the non-root user. Needs root, Debian's docker.io
(dockerd; started here when none runs, stopped again) and debootstrap: .ci/run installs them.
Skipped, saying why, where they are missing. The whole stack is ``make deploy-check``.

The fast part, in `make test`, needs no engine: what build-images.sh hands ``docker build`` for
every image of the offline stack (the merged compose config's build sections, read through the
real Compose binary) fits the Dockerfile it names: the file and context exist, every build
argument is one the Dockerfile declares (Docker ignores any other with a warning, and the image
would quietly fall back to a registry base), every file a COPY or a bind mount takes is in the
context and let through .dockerignore, every secret a step mounts is passed, and the service
images run as uid 10001 with a HEALTHCHECK, listen address and EXPOSE on the service's port.
Dockerfile lint and structure: tests/deploy/test_deploy.py and test_offline.py.
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

from services.common.contract.settings import DEFAULT_PORTS  # noqa: E402
from tests.deploy.test_deploy import CPU_COMPOSE, GPU_COMPOSE, OFFLINE_COMPOSE, compose_config  # noqa: E402

needs_engine = pytest.mark.skipif(
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


# ------------------------------------------------------------------ fast part: no engine

def _builds() -> dict[str, dict]:
    """image -> build section, as deploy/build-images.sh reads them (the merged offline config, each
    image once), plus the uv image it builds first with the same settings."""
    services = compose_config([GPU_COMPOSE, CPU_COMPOSE, OFFLINE_COMPOSE])["services"]
    out = {s["image"]: s["build"] for s in services.values() if s.get("build")}
    uv = next(b for b in out.values() if "UV_IMAGE" in (b.get("args") or {}))
    out["ftlab-uv"] = {"context": str(ROOT), "dockerfile": "deploy/offline/Dockerfile.uv",
                       "args": {"BASE_IMAGE": uv["args"]["BASE_IMAGE"]}, "secrets": [{"source": "ca_bundle"}]}
    return out


def _let_through(path: str, allowed: set[str]) -> bool:
    """.dockerignore is an allow-list ('*', then '!path' entries; tests/deploy/test_deploy.py)."""
    return any(path == a or path.startswith(a + "/") for a in allowed)


def test_every_offline_build_fits_its_dockerfile_and_context():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    builds = _builds()
    assert {"ftlab-trainer", "ftlab-uv"} <= {i.split(":")[0] for i in builds}, sorted(builds)
    problems = []
    for image, b in builds.items():
        context = Path(b["context"])
        dockerfile = context / b.get("dockerfile", "Dockerfile")
        if context.resolve() != ROOT or not dockerfile.is_file():
            problems.append(f"{image}: context {context}, dockerfile {dockerfile}: build-images.sh builds "
                            "from the repository root")
            continue
        text = dockerfile.read_text()
        declared, passed_args = set(re.findall(r"^ARG\s+(\w+)", text, re.M)), set(b.get("args") or {})
        for arg in sorted(set(re.findall(r"^FROM\s+\$\{(\w+)\}", text, re.M)) - passed_args):
            problems.append(f"{image}: FROM ${{{arg}}} is not passed by the build (its default is a registry image)")
        if dockerfile.parent == ROOT / "deploy":   # ftlab's own images; the stand-ins share one looser set
            for arg in sorted(passed_args - declared):
                problems.append(f"{image}: build arg {arg} is not declared by {dockerfile.name} (Docker ignores it)")
        sources = [src for line in re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(.+)\s+\S+$", text, re.M)
                   for src in line.split()]
        sources += re.findall(r"--mount=type=bind,source=([^,\s]+)", text)
        for src in sources:
            src = src.rstrip("/")
            matches = [p.relative_to(ROOT).as_posix() for p in ROOT.glob(src)]
            if not matches and "[" not in src:   # README.m[d]: copied when it exists (Dockerfile.trainer)
                problems.append(f"{image}: {src} is not in the build context")
            problems += [f"{image}: {m} is excluded by .dockerignore" for m in matches if not _let_through(m, allowed)]
        passed = {x["source"] for x in b.get("secrets") or []}
        for secret in sorted(set(re.findall(r"--mount=type=secret,id=(\w+)", text)) - passed):
            problems.append(f"{image}: a step mounts secret {secret}, which the build does not pass")
        name = image.split(":")[0].removeprefix("ftlab-")
        if name in DEFAULT_PORTS:   # the service images: what the long form's container shows
            port = DEFAULT_PORTS[name]
            if not re.search(r"^USER 10001:10001$", text, re.M):
                problems.append(f"{image}: must run as uid 10001 (volumes and k8s runAsUser agree on it)")
            if f'CMD ["ftlab-healthcheck", "--service", "{name}", "--address", "127.0.0.1:{port}"]' not in text \
                    or f"FTLAB_LISTEN=0.0.0.0:{port}" not in text or not re.search(rf"^EXPOSE {port}$", text, re.M):
                problems.append(f"{image}: HEALTHCHECK, FTLAB_LISTEN and EXPOSE must name port {port}")
            if not (ROOT / "services" / name / "server.py").is_file():
                problems.append(f"{image}: CMD runs services.{name}.server, which does not exist")
            python = (b.get("args") or {}).get("PYTHON", "")
            if not python.endswith("/python3.11"):
                problems.append(f"{image}: PYTHON={python!r}, not the Debian base's python3.11")
    pyproject = (ROOT / "pyproject.toml").read_text()
    if not re.search(r'^ftlab-healthcheck = "services\.common\.rpc\.healthcheck:main"', pyproject, re.M):
        problems.append("pyproject.toml: no ftlab-healthcheck console script (the images' HEALTHCHECK)")
    if "python3.11," not in (ROOT / "deploy/build-images.sh").read_text():
        problems.append("build-images.sh: the Debian base must include python3.11 (the images' PYTHON)")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ long form: make check-images

@needs_engine
@pytest.mark.long
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
