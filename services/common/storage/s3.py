"""The S3 backend of :class:`ObjectStore` (MinIO or any S3 endpoint), through the ``minio`` SDK,
and :func:`store_from_env`, which picks a backend from ``FTLAB_*`` environment variables."""
from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import inspect
import logging
import os
import tempfile
import time
from typing import Iterable
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error

from services.common.contract.errors import NotFoundError, StorageError, ValidationError
from services.common.storage.store import (BUCKETS, ObjectStore, StorageUnavailable, check_key, copy_hashing,
                                     make_uri)

log = logging.getLogger("ftlab.storage")
DEFAULT_RETRY_S = 120.0  # FTLAB_STORAGE_RETRY_S: how long an operation retries through an outage

# S3 limits on multipart parts (the last part may be smaller).
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
_MISSING = ("NoSuchKey", "NoSuchBucket")


def parse_endpoint(endpoint: str, secure: bool = False) -> tuple[str, bool]:
    """``host:port`` or ``http(s)://host:port`` → ``(host:port, secure)``; a scheme decides ``secure``."""
    endpoint = endpoint.strip()
    if "://" in endpoint:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.netloc or url.path not in ("", "/") \
                or url.query or url.fragment:
            raise ValidationError(f"S3 endpoint {endpoint!r} must be host:port or http(s)://host:port")
        return url.netloc, url.scheme == "https"
    if not endpoint or "/" in endpoint:
        raise ValidationError(f"S3 endpoint {endpoint!r} must be host:port or http(s)://host:port")
    return endpoint, secure


_TRANSIENT_CODES = ("InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "XMinioServerNotInitialized")


def _translate_errors(method):
    """Map SDK failures onto ftlab errors, so callers never see minio or urllib3 exceptions.

    Transient failures (unreachable endpoint, 5xx) are retried with exponential backoff for up to
    ``retry_deadline_s`` (FTLAB_STORAGE_RETRY_S); then :class:`StorageUnavailable` names the
    outage. Every S3 operation here is idempotent (whole-object PUT/GET/DELETE), so a retry is safe."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self: S3Store, *args, **kwargs):
        started, delay = time.monotonic(), 0.25
        while True:
            try:
                return method(self, *args, **kwargs)
            except S3Error as e:
                if e.code in _MISSING:
                    # name the caller's bucket/key: S3 error bodies (moto's, HEAD's) often lack them
                    called = signature.bind(self, *args, **kwargs).arguments
                    raise NotFoundError(f"{make_uri(called.get('bucket', '?'), called.get('key', ''))} does not "
                                        f"exist ({e.code})") from e
                if e.code not in _TRANSIENT_CODES:
                    raise StorageError(f"{self.describe()}: {method.__name__} failed: {e.code}: {e.message}") from e
                reason: object = f"{e.code}: {e.message}"
                err: Exception = e
            except (MinioException, urllib3.exceptions.HTTPError) as e:
                # MaxRetryError hides the useful part (connection refused, timeout...) in .reason
                reason, err = getattr(e, "reason", None) or e, e
            waited = time.monotonic() - started
            if waited + delay > self.retry_deadline_s:
                raise StorageUnavailable(
                    f"{self.describe()} failed or is unreachable during {method.__name__}"
                    + (f" (gave up after {waited:.0f}s of retries, FTLAB_STORAGE_RETRY_S={self.retry_deadline_s:g})"
                       if self.retry_deadline_s else "") + f": {reason}") from err
            log.warning("%s: %s failed (%s); retrying in %.1fs", self.describe(), method.__name__, reason, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    return wrapper


def _checksum_headers(data: bytes) -> dict[str, str]:
    """The request headers that make an S3 store verify ``data`` on arrival."""
    return {"x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
            "x-amz-sdk-checksum-algorithm": "SHA256"}


class S3Store(ObjectStore):
    """Buckets and keys map 1:1 onto S3. Objects appear atomically on S3, so no temp-key dance."""

    def __init__(self, endpoint: str, access_key: str | None, secret_key: str | None, secure: bool = False,
                 region: str | None = None, part_size: int = 16 * 1024 * 1024,
                 timeout_s: float = 300, retries: int = 5, retry_deadline_s: float = 0.0):
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValidationError(f"part_size must be {MIN_PART_SIZE}..{MAX_PART_SIZE} bytes, got {part_size}")
        self.endpoint, self.secure = parse_endpoint(endpoint, secure)
        # kept for config(): job child processes rebuild the store from these
        self._settings = {"endpoint": self.endpoint, "access_key": access_key, "secret_key": secret_key,
                          "secure": self.secure, "region": region, "part_size": part_size,
                          "timeout_s": timeout_s, "retries": retries, "retry_deadline_s": retry_deadline_s}
        self.retry_deadline_s = retry_deadline_s
        self.part_size = part_size
        # minio's default client, but with tunable timeout/retries: an outage must surface in
        # seconds in tests, not after 5 retries of a 5-minute timeout.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self.client = Minio(self.endpoint, access_key=access_key, secret_key=secret_key,
                            secure=self.secure, region=region, http_client=http)

    @_translate_errors
    def ensure_buckets(self, buckets: Iterable[str] = BUCKETS) -> None:
        for b in buckets:
            if not self.client.bucket_exists(b):
                try:
                    self.client.make_bucket(b)
                except S3Error as e:
                    # another process created it between our check and our create
                    if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

    @_translate_errors
    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        check_key(key)
        self.client._put_object(bucket, key, data, _checksum_headers(data))

    @_translate_errors
    def get_bytes(self, bucket: str, key: str) -> bytes:
        check_key(key)
        response = self.client.get_object(bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    @_translate_errors
    def put_file(self, bucket: str, key: str, path: str | os.PathLike) -> str:
        """One PUT up to ``part_size``, multipart above; every request carries the SHA-256 of its
        body (``x-amz-checksum-sha256``: MinIO and AWS recompute it and refuse a mismatch with
        BadDigest), a multipart upload declares ``x-amz-checksum-algorithm: SHA256`` and lists
        each part's checksum when it completes. The minio SDK 7.2 has no checksum parameter,
        hence its request methods. Returns the whole file's sha256, computed on the way."""
        check_key(key)
        whole = hashlib.sha256()
        with open(path, "rb") as fh:
            first = fh.read(self.part_size)
            whole.update(first)
            nxt = fh.read(self.part_size)
            if not nxt:
                self.client._put_object(bucket, key, first, _checksum_headers(first))
                return whole.hexdigest()
            upload_id = self.client._create_multipart_upload(bucket, key, {"x-amz-checksum-algorithm": "SHA256"})
            try:
                parts, part = [], first
                while part:
                    headers = _checksum_headers(part)
                    etag = self.client._upload_part(bucket, key, part, headers, upload_id, len(parts) + 1)
                    parts.append((len(parts) + 1, etag, headers["x-amz-checksum-sha256"]))
                    part, nxt = nxt, (fh.read(self.part_size) if nxt else b"")
                    whole.update(part)
                body = ("<CompleteMultipartUpload>" + "".join(
                    f'<Part><PartNumber>{n}</PartNumber><ETag>"{etag}"</ETag><ChecksumSHA256>{b64}</ChecksumSHA256></Part>'
                    for n, etag, b64 in parts) + "</CompleteMultipartUpload>").encode()
                response = self.client._execute(
                    "POST", bucket, key, body=body, query_params={"uploadId": upload_id},
                    headers={"Content-Type": "application/xml",
                             "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode()})
                if b"<Error>" in response.data:  # S3 may answer 200 and fail in the body
                    raise StorageError(f"{self.describe()}: completing the upload of {make_uri(bucket, key)} "
                                       f"failed: {response.data[:500]!r}")
            except BaseException:
                with contextlib.suppress(Exception):  # the upload's own error is the one to report
                    self.client._abort_multipart_upload(bucket, key, upload_id)
                raise
        return whole.hexdigest()

    @_translate_errors
    def get_file(self, bucket: str, key: str, path: str | os.PathLike) -> str:
        check_key(key)
        dest = os.fspath(path)
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(dest) or ".")
        try:
            response = self.client.get_object(bucket, key)
            try:
                with os.fdopen(fd, "wb") as out:
                    copy_hashing(response, out, h)
            finally:
                response.close()
                response.release_conn()
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return h.hexdigest()

    @_translate_errors
    def hash_object(self, bucket: str, key: str) -> tuple[int, str]:
        check_key(key)
        h = hashlib.sha256()
        response = self.client.get_object(bucket, key)
        try:
            size = copy_hashing(response, None, h)
        finally:
            response.close()
            response.release_conn()
        return size, h.hexdigest()

    @_translate_errors
    def exists(self, bucket: str, key: str) -> bool:
        check_key(key)
        try:
            self.client.stat_object(bucket, key)
            return True
        except S3Error as e:
            if e.code in _MISSING:
                return False
            raise

    @_translate_errors
    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        try:
            return sorted(o.object_name for o in self.client.list_objects(bucket, prefix=prefix, recursive=True))
        except S3Error as e:
            if e.code == "NoSuchBucket":  # like LocalStore: a missing bucket holds nothing
                return []
            raise

    @_translate_errors
    def delete(self, bucket: str, key: str) -> None:
        check_key(key)
        try:
            self.client.remove_object(bucket, key)
        except S3Error as e:
            if e.code != "NoSuchBucket":
                raise

    @_translate_errors
    def delete_prefix(self, bucket: str, prefix: str) -> None:
        # one DeleteObjects request per 1000 keys instead of one request per key
        errors = list(self.client.remove_objects(bucket, (DeleteObject(k) for k in self.list_keys(bucket, prefix))))
        if errors:
            raise StorageError(f"{self.describe()}: could not delete {len(errors)} objects under "
                               f"{make_uri(bucket, prefix)}, first: {errors[0].name}: {errors[0].message}")

    def describe(self) -> str:
        return f"S3 endpoint {'https' if self.secure else 'http'}://{self.endpoint}"

    def config(self) -> dict:
        return {"kind": "s3", **self._settings}
