"""``ftlab doctor``: check what this host's configuration reaches — storage, each service (health,
auth, version), TLS and token settings, GPU/driver visibility — and print what is wrong and how
to fix it. Exit 0 when nothing FAILs (WARN is fine: e.g. no GPU on a CPU-only host)."""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from typing import Callable, Mapping

from services.common.contract.errors import FtlabError
from services.common.contract.settings import SERVICES, service_address


@dataclass
class Check:
    status: str   # OK | WARN | FAIL
    what: str
    detail: str
    fix: str = ""


def check_settings(env: Mapping[str, str]) -> list[Check]:
    from services.common.rpc.auth import load_tokens
    from services.common.rpc.tls import channel_credentials
    out = []
    try:
        tokens = load_tokens(env)
        out.append(Check("OK" if tokens else "WARN", "auth token",
                         f"{len(tokens)} token(s) configured" if tokens else "no FTLAB_AUTH_TOKEN: calls carry no token",
                         "" if tokens else "fine for the embedded loopback stack; for a shared host set "
                                           "FTLAB_AUTH_TOKEN (or FTLAB_AUTH_TOKEN_FILE) to the services' token"))
    except FtlabError as exc:
        out.append(Check("FAIL", "auth token", str(exc), "fix FTLAB_AUTH_TOKEN / FTLAB_AUTH_TOKEN_FILE"))
    try:
        tls = channel_credentials(env)
        out.append(Check("OK", "TLS", "verifying servers with FTLAB_TLS_CA" if tls else "plaintext (no FTLAB_TLS_CA)"))
    except FtlabError as exc:
        out.append(Check("FAIL", "TLS", str(exc), "point FTLAB_TLS_CA / FTLAB_TLS_CLIENT_CERT / _KEY at readable PEM files"))
    return out


def check_storage(env: Mapping[str, str]) -> list[Check]:
    from services.common.storage.factory import store_from_env
    env = {**env, "FTLAB_STORAGE_RETRY_S": "0"}  # report an outage now, don't wait it out
    try:
        store = store_from_env(env)
        key = f"doctor/{uuid.uuid4().hex}"
        store.put_bytes("jobs", key, b"ok")
        ok = store.get_bytes("jobs", key) == b"ok"
        store.delete("jobs", key)
        return [Check("OK" if ok else "FAIL", "storage", f"{store.describe()}: buckets present, write/read/delete work")]
    except FtlabError as exc:
        kind = env.get("FTLAB_STORAGE", "local")
        fix = ("check FTLAB_S3_ENDPOINT is reachable from here and FTLAB_S3_ACCESS_KEY/SECRET_KEY are the "
               "services' account (`docker compose ps minio`)" if kind == "s3"
               else "check FTLAB_LOCAL_ROOT is a writable directory")
        return [Check("FAIL", "storage", str(exc), fix)]


def check_service(service: str, env: Mapping[str, str]) -> Check:
    import grpc

    from services.common.rpc.clients import ServiceClient, Unauthenticated
    from services.common.generated.ftlab.v1 import jobs_pb2
    from services.common.rpc.server import VERSION_KEY, ftlab_version
    address = service_address(service, env)
    try:
        from services.common.rpc.auth import client_token
        from services.common.rpc.tls import channel_credentials
        with ServiceClient(service, address, timeout_s=5, token=client_token(env),
                           credentials=channel_credentials(env)) as c:
            if not c.healthy(timeout_s=3):
                return Check("FAIL", service, f"{address}: not answering SERVING",
                             f"start it (`ftlab up`, `docker compose up -d {service}`) or set FTLAB_{service.upper()}_ADDR;"
                             " with TLS on the server, set FTLAB_TLS_CA here")
            try:
                _, call = c.stub.ListJobs.with_call(jobs_pb2.ListJobsRequest(page_size=1), timeout=5)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise Unauthenticated(exc.details()) from None
                raise
            version = dict(call.trailing_metadata() or ()).get(VERSION_KEY, "unknown")
            mine = ftlab_version()
            if version != mine:
                return Check("WARN", service, f"{address}: SERVING, version {version} (this client: {mine})",
                             "upgrade the older side so client and service agree")
            return Check("OK", service, f"{address}: SERVING, version {version}, token accepted")
    except Unauthenticated as exc:
        return Check("FAIL", service, f"{address}: healthy but refused the call: {exc}",
                     "set FTLAB_AUTH_TOKEN (or FTLAB_AUTH_TOKEN_FILE) to one of the service's tokens")
    except FtlabError as exc:
        return Check("FAIL", service, f"{address}: {exc}", f"check FTLAB_{service.upper()}_ADDR and the service's log")


def check_gpu() -> Check:
    if not shutil.which("nvidia-smi"):
        return Check("WARN", "gpu", "no NVIDIA driver visible (nvidia-smi not on PATH): jobs run on CPU",
                     "fine on a CPU host; on a GPU host install the NVIDIA driver, and the NVIDIA Container "
                     "Toolkit for Docker (`docker run --gpus all ... nvidia-smi` must work)")
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10, check=True).stdout
        gpus = [line.strip() for line in out.strip().splitlines()]
        return Check("OK" if gpus else "WARN", "gpu", "; ".join(gpus) or "nvidia-smi lists no GPU",
                     "" if gpus else "check NVIDIA_VISIBLE_DEVICES / the container's GPU reservation")
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("FAIL", "gpu", f"nvidia-smi failed: {exc}", "the driver is broken or mismatched: reinstall it, "
                                                                   "or reboot after a driver upgrade")


def run(env: Mapping[str, str] = os.environ, services=SERVICES, out: Callable[[str], None] = print) -> int:
    checks = check_settings(env) + check_storage(env) + [check_service(s, env) for s in services] + [check_gpu()]
    for c in checks:
        out(f"{c.status:4s}  {c.what:10s} {c.detail}")
        if c.fix and c.status != "OK":
            out(f"      {'':10s} fix: {c.fix}")
    failed = sum(c.status == "FAIL" for c in checks)
    out(f"{failed} problem(s)" if failed else "all checks passed")
    return 1 if failed else 0
