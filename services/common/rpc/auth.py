"""Bearer-token authentication for the gRPC services: one server interceptor, tokens from the
environment or a mounted file, and the client side that sends the token.

Auth is ON whenever a token is configured (``FTLAB_AUTH_TOKEN``, several comma-separated for
rotation, and/or ``FTLAB_AUTH_TOKEN_FILE``, one token per line). With no token configured it is
off: the embedded single-user stack on loopback stays usable; a server listening beyond
loopback without a token logs a warning at start-up.
"""
from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path
from typing import Mapping

import grpc

from services.common.contract.errors import ValidationError

log = logging.getLogger("ftlab.auth")
HEADER = "authorization"
# Open without a token: health (Docker/k8s probes, `ftlab doctor`). Reflection is NOT open: it
# lists the whole API; grpcurl sends the token with -H 'authorization: Bearer ...'.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
MIN_TOKEN_CHARS = 16


def load_tokens(env: Mapping[str, str] = os.environ) -> list[str]:
    """Every accepted token: FTLAB_AUTH_TOKEN (comma-separated) plus the lines of
    FTLAB_AUTH_TOKEN_FILE (blank lines and '#' comments skipped). Empty list = auth off."""
    tokens = [t.strip() for t in env.get("FTLAB_AUTH_TOKEN", "").split(",") if t.strip()]
    path = env.get("FTLAB_AUTH_TOKEN_FILE", "").strip()
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ValidationError(f"FTLAB_AUTH_TOKEN_FILE={path!r}: cannot read it: {exc.strerror}") from None
        tokens += [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not tokens:
            raise ValidationError(f"FTLAB_AUTH_TOKEN_FILE={path!r} holds no token")
    short = [t for t in tokens if len(t) < MIN_TOKEN_CHARS]
    if short:
        raise ValidationError(f"auth tokens must be at least {MIN_TOKEN_CHARS} characters "
                              f"({len(short)} shorter); make one with `openssl rand -hex 32`")
    return tokens


def client_token(env: Mapping[str, str] = os.environ) -> str | None:
    """The token a client sends: the first configured one (None = send nothing)."""
    tokens = load_tokens(env)
    return tokens[0] if tokens else None


def token_matches(presented: str, tokens: list[bytes]) -> bool:
    """Constant-time against every token (no early exit: timing says nothing about which)."""
    p = presented.encode()
    ok = False
    for t in tokens:
        ok |= hmac.compare_digest(p, t)
    return ok


def _denied(handler, code: grpc.StatusCode, message: str):
    """A handler of the same shape as ``handler`` that only aborts: the servicer never runs."""
    def abort(request, context):
        context.abort(code, message)

    def abort_stream(request, context):
        context.abort(code, message)
        yield  # pragma: no cover - makes it a generator

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort_stream, handler.request_deserializer,
                                                    handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(lambda it, ctx: abort(None, ctx), handler.request_deserializer,
                                                    handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(lambda it, ctx: abort_stream(None, ctx),
                                                 handler.request_deserializer, handler.response_serializer)


class AuthInterceptor(grpc.ServerInterceptor):
    """Every RPC but health needs ``authorization: Bearer <token>``; otherwise UNAUTHENTICATED
    before the servicer runs (so nothing is queued or written)."""

    def __init__(self, tokens: list[str]):
        if not tokens:
            raise ValueError("AuthInterceptor needs at least one token")
        self._tokens = [t.encode() for t in tokens]

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)  # a lookup only: nothing runs yet
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        value = dict(handler_call_details.invocation_metadata or ()).get(HEADER, "")
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        scheme, _, token = value.partition(" ")
        if not value:
            return _denied(handler, grpc.StatusCode.UNAUTHENTICATED,
                           "missing 'authorization: Bearer <token>' metadata (set FTLAB_AUTH_TOKEN on the client)")
        if scheme.lower() != "bearer" or not token_matches(token.strip(), self._tokens):
            log.warning("rejected %s: bad bearer token", handler_call_details.method)
            return _denied(handler, grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")
        return handler


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class _ClientDetails(grpc.ClientCallDetails):
    def __init__(self, d, metadata):
        self.method, self.timeout, self.credentials = d.method, d.timeout, d.credentials
        self.wait_for_ready, self.compression, self.metadata = d.wait_for_ready, d.compression, metadata


class BearerClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the bearer token to every call of a channel (works on plaintext and TLS channels)."""

    def __init__(self, token: str):
        self._md = (HEADER, f"Bearer {token}")

    def _details(self, d):
        return _ClientDetails(d, list(d.metadata or ()) + [self._md])

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)
