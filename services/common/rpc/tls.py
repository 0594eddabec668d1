"""Optional TLS for the gRPC services, from PEM file paths in the environment.

Server: ``FTLAB_TLS_CERT`` + ``FTLAB_TLS_KEY`` turn TLS on; ``FTLAB_TLS_CA`` in addition requires
every client to present a certificate signed by that CA (mutual TLS).
Client: ``FTLAB_TLS_CA`` turns TLS on and is the CA the server's certificate must chain to;
``FTLAB_TLS_CLIENT_CERT`` + ``FTLAB_TLS_CLIENT_KEY`` are the client's certificate for mutual TLS.
The server's certificate must name the host clients dial (a SAN for the DNS name or IP).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import grpc

from services.common.contract.errors import ValidationError


def _read(problems: list[str], var: str, env: Mapping[str, str]) -> bytes | None:
    path = env.get(var, "").strip()
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        problems.append(f"{var}={path!r}: cannot read it: {exc.strerror}")
        return None


def _pair(problems, cert_var, key_var, env):
    cert, key = _read(problems, cert_var, env), _read(problems, key_var, env)
    if bool(env.get(cert_var, "").strip()) != bool(env.get(key_var, "").strip()):
        problems.append(f"{cert_var} and {key_var} must be set together")
    return cert, key


def server_credentials(env: Mapping[str, str] = os.environ) -> grpc.ServerCredentials | None:
    """None = plaintext (no FTLAB_TLS_CERT/KEY)."""
    problems: list[str] = []
    cert, key = _pair(problems, "FTLAB_TLS_CERT", "FTLAB_TLS_KEY", env)
    ca = _read(problems, "FTLAB_TLS_CA", env)
    if problems:
        raise ValidationError(problems)
    if cert is None or key is None:
        return None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(env: Mapping[str, str] = os.environ) -> grpc.ChannelCredentials | None:
    """None = plaintext (no FTLAB_TLS_CA). The server is always verified against the CA."""
    problems: list[str] = []
    ca = _read(problems, "FTLAB_TLS_CA", env)
    cert, key = _pair(problems, "FTLAB_TLS_CLIENT_CERT", "FTLAB_TLS_CLIENT_KEY", env)
    if problems:
        raise ValidationError(problems)
    if ca is None:
        if cert is not None:
            raise ValidationError("FTLAB_TLS_CLIENT_CERT is set but FTLAB_TLS_CA is not: set the CA that "
                                  "signed the server's certificate")
        return None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
