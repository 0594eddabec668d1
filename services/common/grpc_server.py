"""gRPC bootstrap shared by the three services: health, reflection, bearer-token auth and
optional (mutual) TLS, one error-mapping interceptor, graceful shutdown on SIGTERM/SIGINT."""
from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.auth import AuthInterceptor, is_loopback
from services.common.settings import grpc_message_options
from services.common.errors import (MAX_ERROR_CHARS, FtlabError, NotFoundError, PreconditionError, StorageError,
                                    ValidationError, shorten)

log = logging.getLogger("ftlab.grpc")
VERSION_KEY = "ftlab-version"  # trailing metadata of every answered RPC (`ftlab doctor` reads it)
STATUS_DETAILS_KEY = "grpc-status-details-bin"  # google.rpc.Status, as grpcio-status reads it
MAX_DETAILS_BYTES = 4096  # the problems list's share of gRPC's 8 KiB metadata budget


def ftlab_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("ftlab")
    except PackageNotFoundError:
        return "unknown"

_STATUS = [
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (StorageError, grpc.StatusCode.UNAVAILABLE),
]


def bad_request_status(code: grpc.StatusCode, message: str, problems: list[str]) -> status_pb2.Status:
    """The standard rich error (``google.rpc.Status`` with a ``google.rpc.BadRequest`` detail, one
    field violation per problem; ``field`` is the problem's leading ``path:`` when it has one) that
    grpcio-status' ``rpc_status.from_call`` and grpcurl read. Problems past ``MAX_DETAILS_BYTES``
    are counted in a last violation; ``message`` (the status text) still holds them all."""
    bad, used = error_details_pb2.BadRequest(), 0
    for i, problem in enumerate(problems):
        head, sep, _ = problem.partition(": ")
        field = head if sep and " " not in head else ""
        if used + len(problem.encode()) > MAX_DETAILS_BYTES:
            bad.field_violations.add(description=f"... and {len(problems) - i} more (see the status message)")
            break
        bad.field_violations.add(field=field, description=problem)
        used += len(problem.encode()) + len(field)
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(bad)
    return status


def status_for(exc: BaseException) -> grpc.StatusCode:
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


class _Undecodable:
    """What a request that is not a valid message of its type deserializes to."""

    def __init__(self, error: Exception):
        self.error = error


def _lenient(deserialize):
    """Bytes that don't parse become INVALID_ARGUMENT (grpc itself would say INTERNAL)."""
    if deserialize is None:
        return None

    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception as exc:  # noqa: BLE001 - reported to the caller as the request's fault
            return _Undecodable(exc)
    return parse


def _check_decoded(request, context, method: str) -> None:
    if isinstance(request, _Undecodable):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"request: not a valid {method.rsplit('/', 1)[-1]} request message "
                      f"({type(request.error).__name__}: {request.error})")


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Domain errors -> status codes, in one place. Unexpected errors are logged with their
    traceback and reported as INTERNAL with the message."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        version_md = ((VERSION_KEY, ftlab_version()),)

        def abort(context, exc):
            code = status_for(exc)
            if not isinstance(exc, FtlabError):
                log.exception("%s failed", method)
            message = shorten(str(exc) or type(exc).__name__)  # fits gRPC's metadata limit
            if isinstance(exc, ValidationError):  # each problem apart, for clients that list them
                context.set_trailing_metadata(version_md + (
                    (STATUS_DETAILS_KEY, bad_request_status(code, message, exc.problems).SerializeToString()),))
            context.abort(code, message)

        if handler.unary_unary:
            inner = handler.unary_unary

            def unary(request, context):
                context.set_trailing_metadata(version_md)
                _check_decoded(request, context, method)
                try:
                    return inner(request, context)
                except Exception as exc:  # noqa: BLE001 - mapped, not swallowed
                    abort(context, exc)
            return grpc.unary_unary_rpc_method_handler(unary, _lenient(handler.request_deserializer),
                                                       handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            def stream(request, context):
                context.set_trailing_metadata(version_md)
                _check_decoded(request, context, method)
                try:
                    yield from inner_stream(request, context)
                except Exception as exc:  # noqa: BLE001
                    abort(context, exc)
            return grpc.unary_stream_rpc_method_handler(stream, _lenient(handler.request_deserializer),
                                                        handler.response_serializer)
        return handler


def build_server(address: str, servicer, add_to_server, service_full_name: str,
                 max_workers: int = 32, tokens: list[str] | tuple[str, ...] = (),
                 credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A started-ready (not yet started) server with health and reflection. Returns the bound port.

    ``tokens``: bearer tokens every RPC but health must present (empty = auth off).
    ``credentials``: TLS server credentials (None = plaintext)."""
    if not tokens and not is_loopback(address):
        log.warning("listening on %s WITHOUT authentication: set FTLAB_AUTH_TOKEN (or FTLAB_AUTH_TOKEN_FILE) "
                    "so only holders of the token can submit jobs", address)
    # auth first (outermost): a refused call never reaches the servicer or the error mapping
    interceptors = ([AuthInterceptor(list(tokens))] if tokens else []) + [ErrorMappingInterceptor()]
    # so_reuseport off: gRPC's default lets a second server bind a port one already serves, and
    # the kernel then splits connections between them (two stacks on one port, jobs on either)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         interceptors=interceptors,
                         options=grpc_message_options() + [("grpc.so_reuseport", 0)])
    add_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (service_full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    for name in ("", service_full_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


def wait_for_termination(server: grpc.Server, health_servicer, on_stop, grace_s: float = 10.0) -> None:
    """Block until SIGTERM/SIGINT, then: report NOT_SERVING, stop accepting, run on_stop."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    health_servicer.enter_graceful_shutdown()
    done = server.stop(grace_s)
    on_stop()
    done.wait(grace_s)
