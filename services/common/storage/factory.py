"""The one place stores are made: from the settings a live store reports (:func:`open_store`,
job children reopen the service's store this way) or from the environment (:func:`store_from_env`)."""
from __future__ import annotations

import os
from typing import Mapping

from services.common.contract.errors import ValidationError
from services.common.storage.store import LocalStore, ObjectStore


def open_store(config: dict) -> ObjectStore:
    """The store a live store's ``config()`` describes: ``{"kind": "local", "root": path}`` or
    ``{"kind": "s3", ...}`` (S3Store's settings). Raises ``ValidationError`` for another kind."""
    kind = config.get("kind")
    if kind == "local":
        return LocalStore(config["root"])
    if kind == "s3":
        from services.common.storage.s3 import S3Store  # minio and urllib3 only where S3 is used (~1 s per job start)
        return S3Store(**{k: v for k, v in config.items() if k != "kind"})
    raise ValidationError(f"unknown store kind {kind!r}; known: local, s3")


_BOOLS = {"1": True, "true": True, "0": False, "false": False}


def store_from_env(env: Mapping[str, str] = os.environ, create_buckets: bool = True) -> ObjectStore:
    """The store that ``FTLAB_STORAGE`` (``local``, the default, or ``s3``) and its settings describe,
    with every bucket created (``create_buckets=False``: none, for a door that only reads: a
    refused request writes nothing). Reports all bad settings at once."""
    kind = env.get("FTLAB_STORAGE", "local").strip().lower() or "local"
    if kind == "local":
        store: ObjectStore = LocalStore(env.get("FTLAB_LOCAL_ROOT") or ".ftlab/storage")
    elif kind == "s3":
        from services.common.storage.s3 import DEFAULT_RETRY_S, S3Store, parse_endpoint
        problems = []
        endpoint = env.get("FTLAB_S3_ENDPOINT", "").strip()
        raw_secure = (env.get("FTLAB_S3_SECURE") or "").strip().lower()
        if raw_secure and raw_secure not in _BOOLS:
            problems.append(f"FTLAB_S3_SECURE={raw_secure!r} must be one of: {', '.join(_BOOLS)}")
        secure = _BOOLS.get(raw_secure, False)
        if not endpoint:
            problems.append("FTLAB_S3_ENDPOINT is required when FTLAB_STORAGE=s3 (host:port or http(s)://host:port)")
        else:
            try:
                endpoint, url_secure = parse_endpoint(endpoint, secure)
                if raw_secure in _BOOLS and url_secure != secure:
                    problems.append(f"FTLAB_S3_SECURE={raw_secure!r} contradicts the scheme of FTLAB_S3_ENDPOINT")
                secure = url_secure
            except ValidationError as e:
                problems.append(f"FTLAB_S3_ENDPOINT: {e}")
        access_key, secret_key = env.get("FTLAB_S3_ACCESS_KEY") or None, env.get("FTLAB_S3_SECRET_KEY") or None
        if (access_key is None) != (secret_key is None):
            problems.append("FTLAB_S3_ACCESS_KEY and FTLAB_S3_SECRET_KEY must be set together")
        if problems:
            raise ValidationError(problems)
        try:
            retry_s = float(env.get("FTLAB_STORAGE_RETRY_S") or DEFAULT_RETRY_S)
            if retry_s < 0:
                raise ValueError
        except ValueError:
            problems.append(f"FTLAB_STORAGE_RETRY_S={env.get('FTLAB_STORAGE_RETRY_S')!r}: must be seconds >= 0")
            retry_s = DEFAULT_RETRY_S
        if problems:
            raise ValidationError(problems)
        store = S3Store(endpoint, access_key, secret_key, secure=secure, region=env.get("FTLAB_S3_REGION") or None,
                        retry_deadline_s=retry_s)
    else:
        raise ValidationError(f"FTLAB_STORAGE={kind!r} is not a known storage; use one of: local, s3")
    if create_buckets:
        store.ensure_buckets()
    return store
