"""gRPC bootstrap shared by the three services: an asyncio server (streams are coroutines, not
threads), its limits and keepalive, health, reflection, bearer-token auth and optional (mutual)
TLS, one error-mapping interceptor, graceful shutdown on SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import threading
from concurrent import futures

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import _async as aio_health
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.rpc.auth import AuthInterceptor, is_loopback
from services.common.contract.settings import grpc_message_options
from services.common.contract.errors import (MAX_ERROR_CHARS, FtlabError, NotFoundError, PreconditionError, StorageError,
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


# The server's limits (issue #28). A WatchJob stream is a coroutine on the event loop, not a thread,
# so thousands cost memory only; past MAX_STREAMS a new stream is refused at once. Submits run
# their door (which may read storage) on the worker threads; past MAX_PENDING_CALLS queued or
# running there, a call is refused at once. Both answer RESOURCE_EXHAUSTED with a google.rpc.RetryInfo
# (clients.py waits that long and tries again). Health, GetJob, ListJobs and CancelJob never queue
# behind either: they are served on the event loop itself.
MAX_STREAMS = 10_000
MAX_PENDING_CALLS = 256
# Threads for the Submits. Few on purpose: each competes with the event loop for the GIL, and
# their work (the door, one record write) is short; more submits wait in the queue.
SUBMIT_THREADS = 4
STREAM_RETRY_S = 2.0
CALL_RETRY_S = 0.5
# Keepalive: the server pings an idle connection every 60 s and drops it when a ping goes 20 s
# unanswered, so a dead client's streams end; clients may ping every 10 s or slower. Connections
# are recycled after an hour (load balancers see new ones; a watch reconnects with after_seq).
SERVER_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000), ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_connection_age_ms", 3_600_000), ("grpc.max_connection_age_grace_ms", 60_000),
]


def retry_status(message: str, retry_s: float) -> status_pb2.Status:
    """RESOURCE_EXHAUSTED with the standard retry hint (``google.rpc.RetryInfo``)."""
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromMilliseconds(int(retry_s * 1000))
    status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message=message)
    status.details.add().Pack(info)
    return status


def _is_async(fn) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


class Load:
    """What a server holds now (its event loop's thread alone changes it)."""

    def __init__(self, max_streams: int = MAX_STREAMS, max_pending_calls: int = MAX_PENDING_CALLS):
        self.max_streams, self.max_pending_calls = max_streams, max_pending_calls
        self.streams = 0        # open WatchJob streams
        self.pending_calls = 0  # calls queued for or running on the worker threads


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Domain errors -> status codes, in one place; unexpected errors are logged with their
    traceback and reported as INTERNAL with the message. Also the door of the server's limits
    (:class:`Load`): a stream or a worker-thread call past them is refused with a retry hint.
    Coroutine handlers run on the event loop; plain ones on the worker threads (``pool``)."""

    def __init__(self, load: Load, pool: futures.Executor):
        self.load, self.pool = load, pool

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        version_md = ((VERSION_KEY, ftlab_version()),)
        load, pool = self.load, self.pool

        async def abort(context, exc):
            code = status_for(exc)
            if not isinstance(exc, FtlabError):
                log.exception("%s failed", method)
            message = shorten(str(exc) or type(exc).__name__)  # fits gRPC's metadata limit
            if isinstance(exc, ValidationError):  # each problem apart, for clients that list them
                context.set_trailing_metadata(version_md + (
                    (STATUS_DETAILS_KEY, bad_request_status(code, message, exc.problems).SerializeToString()),))
            await context.abort(code, message)

        async def refuse(context, what: str, retry_s: float):
            status = retry_status(f"the server is at its limit of {what}; retry in {retry_s:g}s", retry_s)
            context.set_trailing_metadata(version_md + ((STATUS_DETAILS_KEY, status.SerializeToString()),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, status.message)

        async def check_decoded(request, context):
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"request: not a valid {method.rsplit('/', 1)[-1]} request message "
                                    f"({type(request.error).__name__}: {request.error})")

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request, context):
                context.set_trailing_metadata(version_md)
                await check_decoded(request, context)
                if _is_async(inner):
                    call = inner(request, context)
                else:  # a Submit: its door may read storage, so it runs on a worker thread
                    if load.pending_calls >= load.max_pending_calls:
                        await refuse(context, f"{load.max_pending_calls} calls in progress", CALL_RETRY_S)
                    call = asyncio.get_running_loop().run_in_executor(pool, inner, request, context)
                    load.pending_calls += 1
                try:
                    return await call
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # noqa: BLE001 - mapped, not swallowed
                    await abort(context, exc)
                finally:
                    if not _is_async(inner):
                        load.pending_calls -= 1
            return grpc.unary_unary_rpc_method_handler(unary, _lenient(handler.request_deserializer),
                                                       handler.response_serializer)
        if handler.unary_stream and _is_async(handler.unary_stream):
            inner_stream = handler.unary_stream

            async def stream(request, context):
                context.set_trailing_metadata(version_md)
                await check_decoded(request, context)
                if load.streams >= load.max_streams:
                    await refuse(context, f"{load.max_streams} open streams", STREAM_RETRY_S)
                load.streams += 1
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    await abort(context, exc)
                finally:
                    load.streams -= 1
            return grpc.unary_stream_rpc_method_handler(stream, _lenient(handler.request_deserializer),
                                                        handler.response_serializer)
        return handler


class _SyncInterceptor(grpc.aio.ServerInterceptor):
    """A synchronous ``grpc.ServerInterceptor`` that only looks a handler up and may replace it
    (the auth interceptor), on the asyncio server."""

    def __init__(self, inner: grpc.ServerInterceptor):
        self.inner = inner

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        return self.inner.intercept_service(lambda _details: handler, handler_call_details)


class AsyncServer:
    """A ``grpc.aio`` server on its own event-loop thread, driven like the synchronous one
    (``start()``, ``stop(grace)`` returning an Event). ``load`` is what it holds now."""

    def __init__(self, load: Load, max_workers: int):
        self.load = load
        self.pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc-call")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-loop", daemon=True)
        self._thread.start()
        self.server: grpc.aio.Server | None = None
        self._stopped: threading.Event | None = None

    def run(self, coro, timeout_s: float | None = 30.0):
        """Run ``coro`` on the server's loop from another thread; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def start(self) -> None:
        self.run(self.server.start())

    def stop(self, grace: float | None) -> threading.Event:
        if self._stopped is None:
            self._stopped = threading.Event()

            def done(_fut):
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.pool.shutdown(wait=False)
                self._stopped.set()
            asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).add_done_callback(done)
        return self._stopped


class HealthHandle:
    """The asyncio health servicer, set from any thread."""

    def __init__(self, server: AsyncServer, servicer):
        self._server, self.servicer = server, servicer

    def set(self, name: str, status) -> None:
        self._server.run(self.servicer.set(name, status))

    def enter_graceful_shutdown(self) -> None:
        if not self._server.loop.is_closed() and self._server.loop.is_running():
            self._server.run(self.servicer.enter_graceful_shutdown())


def build_server(address: str, servicer, add_to_server, service_full_name: str,
                 max_workers: int = SUBMIT_THREADS, tokens: list[str] | tuple[str, ...] = (),
                 credentials: grpc.ServerCredentials | None = None,
                 load: Load | None = None) -> tuple[AsyncServer, int, HealthHandle]:
    """A ready (not yet started) asyncio server with health and reflection. Returns the bound port.

    ``tokens``: bearer tokens every RPC but health must present (empty = auth off).
    ``credentials``: TLS server credentials (None = plaintext).
    ``max_workers``: threads for the servicer's plain (non-coroutine) methods, the Submits."""
    if not tokens and not is_loopback(address):
        log.warning("listening on %s WITHOUT authentication: set FTLAB_AUTH_TOKEN (or FTLAB_AUTH_TOKEN_FILE) "
                    "so only holders of the token can submit jobs", address)
    handle = AsyncServer(load or Load(), max_workers)
    # auth first (outermost): a refused call never reaches the servicer or the error mapping
    interceptors = ([_SyncInterceptor(AuthInterceptor(list(tokens)))] if tokens else []) + [
        ErrorMappingInterceptor(handle.load, handle.pool)]

    async def make():
        # so_reuseport off: gRPC's default lets a second server bind a port one already serves, and
        # the kernel then splits connections between them (two stacks on one port, jobs on either)
        server = grpc.aio.server(migration_thread_pool=handle.pool, interceptors=interceptors,
                                 options=grpc_message_options() + SERVER_CHANNEL_OPTIONS + [("grpc.so_reuseport", 0)])
        add_to_server(servicer, server)
        health_servicer = aio_health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (service_full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        for name in ("", service_full_name):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        return server, port, health_servicer
    handle.server, port, health_servicer = handle.run(make())
    if port == 0:
        handle.stop(0).wait(5)
        raise RuntimeError(f"could not bind {address}")
    return handle, port, HealthHandle(handle, health_servicer)


def wait_for_termination(server: AsyncServer, health_servicer, on_stop, grace_s: float = 10.0) -> None:
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
