"""One service = store + job runtime + thin servicer + gRPC server. Used by each service's
``__main__`` and by tests (which start real servers on loopback ports)."""
from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from typing import Callable, Mapping

import grpc

from services.common.rpc.auth import is_loopback, load_tokens
from services.common.contract.errors import ValidationError
from services.common.rpc.server import Load, build_server, wait_for_termination
from services.common.jobs.runtime import JobRuntime, RuntimeOptions
from services.common.contract.settings import ServiceSettings, configure_logging
from services.common.storage.store import ObjectStore
from services.common.rpc.tls import server_credentials

log = logging.getLogger("ftlab.service")


@dataclass(frozen=True)
class ServiceDef:
    name: str                                   # trainer | quantizer | evaluator
    full_name: str                              # the proto service, for reflection and health
    servicer: Callable[[JobRuntime, ObjectStore], object]
    add_to_server: Callable
    recipes: dict[str, str]                     # job kind -> "module:function" run in the child
    warm_imports: tuple[str, ...] = ()          # modules the recipes import lazily: the fork server imports them once


@dataclass(frozen=True)
class Security:
    """Who may call a server: bearer tokens (empty = auth off) and TLS credentials (None = plaintext)."""
    tokens: tuple[str, ...] = ()
    credentials: grpc.ServerCredentials | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Security":
        return cls(tuple(load_tokens(env)), server_credentials(env))


class RunningService:
    """``security``: default from the environment (FTLAB_AUTH_TOKEN[_FILE], FTLAB_TLS_*).
    ``metrics_port``: serve Prometheus /metrics there (0 = any free port, None = off).
    ``load``: the server's limits (default: grpc_server's); ``self.server.load`` is what it holds."""

    def __init__(self, sdef: ServiceDef, store: ObjectStore, listen: str,
                 options: RuntimeOptions = RuntimeOptions(), security: Security | None = None,
                 metrics_port: int | None = None, load: Load | None = None):
        self.sdef, self.store = sdef, store
        security = security if security is not None else Security.from_env()
        self.runtime = JobRuntime(sdef.name, store, sdef.recipes, options, warm_imports=sdef.warm_imports)
        self.runtime.start()
        # The reloaded job records (10,000 of them in a research store) live as long as the service:
        # out of the collector's reach, a full collection no longer walks them, which stalled the
        # event loop for over a second each time on a busy 2-core machine (docs/BENCHMARKS.md).
        gc.freeze()
        self.server, self.port, self.health = build_server(
            listen, sdef.servicer(self.runtime, store), sdef.add_to_server, sdef.full_name,
            tokens=security.tokens, credentials=security.credentials, load=load)
        self.server.start()
        self.address = f"{listen.rsplit(':', 1)[0]}:{self.port}"
        self.metrics_http, self.metrics_port = None, None
        if metrics_port is not None:
            from services.common.rpc.metrics import serve_metrics
            host = "127.0.0.1" if is_loopback(listen) else "0.0.0.0"
            self.metrics_http, self.metrics_port = serve_metrics(self.runtime, metrics_port, host)
        log.info("ftlab %s serving on %s (storage: %s; auth %s; %s%s)", sdef.name, self.address, store.describe(),
                 "on" if security.tokens else "OFF", "TLS" if security.credentials else "plaintext",
                 f"; metrics on :{self.metrics_port}/metrics" if self.metrics_port else "")

    def stop(self, grace_s: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait(grace_s)
        self.runtime.shutdown(grace_s)
        if self.metrics_http is not None:
            self.metrics_http.shutdown()
            self.metrics_http.server_close()


def main(sdef: ServiceDef) -> None:
    from services.common.storage.factory import store_from_env
    configure_logging()
    try:
        settings = ServiceSettings.from_env(sdef.name)
    except ValidationError as exc:  # one log line listing every bad setting, not a traceback
        log.error("%s not started: bad settings: %s", sdef.name, exc)
        raise SystemExit(2) from None
    svc = RunningService(sdef, store_from_env(), settings.listen,
                         RuntimeOptions(settings.max_running, settings.cancel_grace_s),
                         metrics_port=settings.metrics_port)
    wait_for_termination(svc.server, svc.health, lambda: svc.runtime.shutdown(settings.cancel_grace_s))

