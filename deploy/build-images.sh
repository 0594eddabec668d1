#!/usr/bin/env bash
# Build every image of the stack without any container registry (docs/DEPLOY.md, "Air-gapped
# hosts"): the Debian base (debootstrap -> docker import), uv from PyPI, then every service of the
# merged compose files that has a build section (ftlab's four images and the offline stand-ins),
# in file order, each once. Sequential on purpose: layers are reused (the three service images
# share their torch layer) and a small host is not overrun.
#
#   deploy/build-images.sh                     # docker-compose.gpu.yml + cpu + offline
#   deploy/build-images.sh trainer             # the bases and only the named services' images
#   COMPOSE_FILES="docker-compose.gpu.yml docker-compose.offline.yml" deploy/build-images.sh
#
# Needs root (debootstrap), debootstrap, a Docker engine and a BuildKit-capable docker CLI (the
# buildx plugin, or a 20.10-era CLI with BuildKit built in such as Debian's docker.io).
# Settings (environment): FTLAB_CA_BUNDLE (CA bundle the builds trust, default the host's),
# FTLAB_DEBIAN_MIRROR, FTLAB_REBUILD_BASE=1 (redo the Debian base), FTLAB_TORCH_WHEEL_SPEC
# (what `pip download` copies into deploy/wheels, default torch==2.13.0), FTLAB_ENV_FILE (.env).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

COMPOSE_FILES=${COMPOSE_FILES:-docker-compose.gpu.yml docker-compose.cpu.yml docker-compose.offline.yml}
BASE_IMAGE=ftlab-base:bookworm
UV_IMAGE=ftlab-uv:0.9.26
# the Debian packages of the base: Python 3.11 (venv, for pip in the uv image; debootstrap does not
# resolve its dependency on distutils itself), CA certificates
DEBIAN_PACKAGES=python3.11,python3.11-venv,python3-distutils,ca-certificates
export FTLAB_CA_BUNDLE=${FTLAB_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
FTLAB_DEBIAN_MIRROR=${FTLAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
FTLAB_TORCH_WHEEL_SPEC=${FTLAB_TORCH_WHEEL_SPEC:-torch==2.13.0}
ENV_FILE=${FTLAB_ENV_FILE:-.env}
[ -f "$ENV_FILE" ] || ENV_FILE=deploy/.env.example   # building reads no secret; config wants them set

log() { printf '[build-images %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

compose_cli() {
    if docker compose version >/dev/null 2>&1; then echo "docker compose"
    elif command -v docker-compose >/dev/null 2>&1; then echo "docker-compose"
    elif [ -x "$ROOT/.venv/bin/docker-compose" ]; then echo "$ROOT/.venv/bin/docker-compose"
    else die "no Docker Compose v2 (docker compose, docker-compose, or .venv/bin/docker-compose)"; fi
}

# A docker CLI whose `build` runs BuildKit (RUN --mount, build secrets): buildx when installed,
# else a CLI older than 23 with BuildKit built in (newer CLIs without buildx fall back to the
# classic builder, which has neither).
build_cli() {
    if docker buildx version >/dev/null 2>&1; then echo "docker buildx build --load"; return; fi
    local c v
    for c in docker /usr/bin/docker; do
        v=$("$c" version --format '{{.Client.Version}}' 2>/dev/null) || continue
        if [ "${v%%.*}" -lt 23 ]; then echo "env DOCKER_BUILDKIT=1 $c build"; return; fi
    done
    die "no BuildKit-capable docker CLI: install the buildx plugin (or Debian's docker.io CLI)"
}

problems=()
docker info >/dev/null 2>&1 || problems+=("no Docker engine answers (start dockerd)")
[ -s "$FTLAB_CA_BUNDLE" ] || problems+=("FTLAB_CA_BUNDLE=$FTLAB_CA_BUNDLE is not a file")
for f in $COMPOSE_FILES; do [ -f "$f" ] || problems+=("compose file $f missing"); done
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || [ "${FTLAB_REBUILD_BASE:-0}" = 1 ]; then
    command -v debootstrap >/dev/null || problems+=("debootstrap missing (apt-get install debootstrap)")
    [ "$(id -u)" = 0 ] || problems+=("debootstrap needs root")
fi
[ ${#problems[@]} -eq 0 ] || { for p in "${problems[@]}"; do log "error: $p"; done; exit 2; }

COMPOSE=$(compose_cli)
BUILD=$(build_cli)
SECRET=(--secret "id=ca_bundle,src=$FTLAB_CA_BUNDLE")
log "compose: $COMPOSE; build: $BUILD; files: $COMPOSE_FILES"

timed() {  # timed LABEL CMD... : run, then print the stage's seconds
    local t0=$SECONDS; "${@:2}"; log "$1: $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------- 1. Debian base (no registry)
build_base() {
    local tmp; tmp=$(mktemp -d /tmp/ftlab-base.XXXXXX)
    log "debootstrap bookworm ($DEBIAN_PACKAGES) from $FTLAB_DEBIAN_MIRROR"
    if ! debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" bookworm "$tmp/rootfs" "$FTLAB_DEBIAN_MIRROR" \
        > "$tmp/debootstrap.log" 2>&1; then
        tail -20 "$tmp/debootstrap.log" >&2; rm -rf "$tmp"; die "debootstrap failed"
    fi
    rm -rf "$tmp"/rootfs/var/cache/apt/archives/*.deb "$tmp"/rootfs/var/lib/apt/lists/*
    tar -C "$tmp/rootfs" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$tmp"
}
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || [ "${FTLAB_REBUILD_BASE:-0}" = 1 ]; then
    timed "base $BASE_IMAGE" build_base
else
    log "base $BASE_IMAGE: present (FTLAB_REBUILD_BASE=1 redoes it)"
fi

# ---------------------------------------------------------------- 2. local wheelhouse
# The torch wheel the offline images install (TORCH_VERSION in docker-compose.offline.yml): copied
# by pip from wherever this host's pip finds it (its cache, find-links, index).
fill_wheelhouse() {
    local pip="$ROOT/.venv/bin/pip"
    [ -x "$pip" ] || pip="python3 -m pip"
    $pip download -q --no-deps "$FTLAB_TORCH_WHEEL_SPEC" -d deploy/wheels
}
if compgen -G "deploy/wheels/torch-*.whl" >/dev/null; then
    log "wheelhouse: $(cd deploy/wheels && ls torch-*.whl)"
else
    timed "wheelhouse ($FTLAB_TORCH_WHEEL_SPEC)" fill_wheelhouse
fi

# ---------------------------------------------------------------- 3. uv from PyPI
timed "image $UV_IMAGE" $BUILD --network host "${SECRET[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    -f deploy/offline/Dockerfile.uv -t "$UV_IMAGE" .

# ---------------------------------------------------------------- 4. every service with a build section
# (the merged compose config is the one list of images: a service added there is built here)
mapfile -t BUILDS < <($COMPOSE --project-directory "$ROOT" --env-file "$ENV_FILE" $(printf -- '-f %s ' $COMPOSE_FILES) \
    config --format json | python3 -c '
import json, shlex, sys
seen, only = set(), set(sys.argv[1:])
services = json.load(sys.stdin)["services"]
unknown = only - services.keys()
if unknown:
    sys.exit(f"no such service: {sorted(unknown)}")
for name, s in services.items():
    b = s.get("build")
    if not b or s["image"] in seen or (only and name not in only):
        continue
    seen.add(s["image"])
    args = [f"--build-arg={k}={v}" for k, v in sorted((b.get("args") or {}).items())]
    if b.get("network"):
        args.append("--network=" + b["network"])
    print(shlex.join([name, s["image"], b.get("dockerfile", "Dockerfile"), b["context"], *args]))
' "$@")
[ ${#BUILDS[@]} -gt 0 ] || die "no service with a build section in $COMPOSE_FILES"
for line in "${BUILDS[@]}"; do
    eval "set -- $line"
    name=$1 image=$2 dockerfile=$3 context=$4; shift 4
    timed "image $image ($name)" $BUILD "$@" "${SECRET[@]}" -f "$context/$dockerfile" -t "$image" "$context"
done

# ---------------------------------------------------------------- sizes
log "images:"
images=("$BASE_IMAGE" "$UV_IMAGE")
for line in "${BUILDS[@]}"; do eval "set -- $line"; images+=("$2"); done
for i in "${images[@]}"; do
    printf '  %-40s %6d MB\n' "$i" "$(( $(docker image inspect --format '{{.Size}}' "$i") / 1000000 ))" >&2
done
