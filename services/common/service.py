"""One service = store + job runtime + thin servicer + gRPC server. Used by each service's
``__main__`` and by tests (which start real servers on loopback ports)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import grpc

from services.common.grpc_server import build_server, wait_for_termination
from services.common.runtime import JobRuntime, RuntimeOptions
from services.common.settings import ServiceSettings, configure_logging
from services.common.storage import ObjectStore

log = logging.getLogger("ftlab.service")


@dataclass(frozen=True)
class ServiceDef:
    name: str                                   # trainer | quantizer | evaluator
    full_name: str                              # the proto service, for reflection and health
    servicer: Callable[[JobRuntime, ObjectStore], object]
    add_to_server: Callable
    recipes: dict[str, str]                     # job kind -> "module:function" run in the child


class RunningService:
    def __init__(self, sdef: ServiceDef, store: ObjectStore, listen: str,
                 options: RuntimeOptions = RuntimeOptions()):
        self.sdef, self.store = sdef, store
        self.runtime = JobRuntime(sdef.name, store, sdef.recipes, options)
        self.runtime.start()
        self.server, self.port, self.health = build_server(
            listen, sdef.servicer(self.runtime, store), sdef.add_to_server, sdef.full_name)
        self.server.start()
        self.address = f"{listen.rsplit(':', 1)[0]}:{self.port}"
        log.info("ftlab %s serving on %s (storage: %s)", sdef.name, self.address, store.describe())

    def stop(self, grace_s: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait(grace_s)
        self.runtime.shutdown(grace_s)


def main(sdef: ServiceDef) -> None:
    from services.common.s3_store import store_from_env
    configure_logging()
    settings = ServiceSettings.from_env(sdef.name)
    svc = RunningService(sdef, store_from_env(), settings.listen,
                         RuntimeOptions(settings.max_running, settings.cancel_grace_s))
    wait_for_termination(svc.server, svc.health, lambda: svc.runtime.shutdown(settings.cancel_grace_s))


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address)
