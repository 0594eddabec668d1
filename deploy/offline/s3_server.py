"""moto's S3 server with its objects kept on a volume: the stand-in for MinIO in the offline stack.

moto keeps everything in memory, so on its own a `docker compose restart`, `down` + `up` or a crash
would lose every dataset and model. This wrapper mirrors the store to --data: at start it loads the
mirror back (the server only reports ready afterwards), then every --sync-s seconds and on SIGTERM
it writes what changed (objects are compared by ETag, so unchanged ones are not read again). A
kill -9 loses at most the last --sync-s seconds of writes. Objects only: no versions, ACLs or
metadata, which ftlab does not use. Not a production store: on a real host use MinIO.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

def client(port: int):
    # moto accepts any credentials; these never leave the container
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="standin", aws_secret_access_key="standin")


def object_file(root: Path, bucket: str, key: str) -> Path:
    # keys may be long or contain "/" on both sides of a prefix ("a" and "a/b"): hash them to names
    return root / bucket / hashlib.sha256(key.encode()).hexdigest()


class Mirror:
    def __init__(self, s3, root: Path):
        self.s3, self.root = s3, root
        self.index_path = root / "index.json"       # {bucket: {key: etag}}: what the files hold
        self.index: dict[str, dict[str, str]] = (
            json.loads(self.index_path.read_text()) if self.index_path.exists() else {})
        self.lock = threading.Lock()

    def restore(self) -> int:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]    # this process's moto (any key maps to it)
        n = 0
        for bucket, keys in self.index.items():
            self.s3.create_bucket(Bucket=bucket)
            for key, etag in keys.items():
                self.s3.put_object(Bucket=bucket, Key=key, Body=object_file(self.root, bucket, key).read_bytes())
                # a multipart upload's ETag ("<md5 of md5s>-<parts>") is not the MD5 a plain put
                # gives: keep the original, as MinIO does, so clients comparing ETags see no change
                backend.get_object(bucket, key)._etag = etag.strip('"')
                n += 1
        self.index = self.listing()
        return n

    def listing(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for b in self.s3.list_buckets().get("Buckets", []):
            keys = out.setdefault(b["Name"], {})
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
                for o in page.get("Contents", []):
                    keys[o["Key"]] = o["ETag"]
        return out

    def sync(self) -> None:
        with self.lock:
            now = self.listing()
            for bucket, keys in now.items():
                (self.root / bucket).mkdir(parents=True, exist_ok=True)
                old = self.index.get(bucket, {})
                for key, etag in keys.items():
                    if old.get(key) != etag:
                        path = object_file(self.root, bucket, key)
                        tmp = path.with_suffix(".tmp")
                        tmp.write_bytes(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                        os.replace(tmp, path)
            for bucket, keys in self.index.items():
                for key in keys.keys() - now.get(bucket, {}).keys():
                    object_file(self.root, bucket, key).unlink(missing_ok=True)
            tmp = self.index_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(now))
            os.replace(tmp, self.index_path)       # the index changes last: it never names a missing file
            self.index = now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--data", type=Path, default=Path("/data"))
    ap.add_argument("--sync-s", type=float, default=2.0)
    ap.add_argument("--ready-flag", type=Path, default=Path("/tmp/s3-ready"),
                    help="touched once the mirror is loaded back (the compose healthcheck looks for it)")
    args = ap.parse_args()
    args.ready_flag.unlink(missing_ok=True)
    server = ThreadedMotoServer(ip_address="0.0.0.0", port=args.port, verbose=False)
    server.start()
    args.data.mkdir(parents=True, exist_ok=True)
    mirror = Mirror(client(args.port), args.data)
    n = mirror.restore()
    args.ready_flag.touch()
    print(f"s3-standin: serving on :{args.port}, {n} objects restored from {args.data}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(args.sync_s):
        try:
            mirror.sync()
        except Exception as e:      # a sync racing a delete: the next round catches up
            print(f"s3-standin: sync failed, retrying: {e!r}", flush=True)
    mirror.sync()
    print("s3-standin: mirror written, stopping", flush=True)
    server.stop()


if __name__ == "__main__":
    main()
