"""What verifying a model on read costs: fetching the real demo model (SmolLM2-135M-Instruct,
dequantized, about 540 MB) out of storage with every file hashed while it downloads and checked
against the manifest (``artifacts.fetch_dir``, what jobs do since issue #27) versus the plain
copy with a size check that fetches did before (``--mode plain``: the old LocalStore.get_file,
``shutil.copyfile``; minio's ``fget_object`` on S3).

A fetch happens once per model per service (the model cache keeps the verified copy), so this
is the demo's added cost per model it fetches.

    python -m bench.bench_fetch_verify prepare --root DIR          # commit the model into DIR/storage
    python -m bench.bench_fetch_verify fetch --root DIR --mode verify|plain   # one fetch, a process each
    python -m bench.bench_fetch_verify s3 [--reps 5]                # both modes in-process on moto's S3

Time ``fetch`` as whole processes, A against B, e.g. with ``/usr/bin/time -v`` or hyperfine:
``hyperfine 'python -m bench.bench_fetch_verify fetch --root DIR --mode verify' '... --mode plain'``.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

NAME = "SmolLM2-135M-Instruct"


def prepare(root: Path) -> None:
    from services.common.torch_utils import modeling
    from services.common.torch_utils.gguf_import import converted_smollm2, read_origin
    from services.common.storage.store import LocalStore
    store = LocalStore(root / "storage")
    store.ensure_buckets()
    src = converted_smollm2()
    m = modeling.commit_base_model(store, NAME, src, read_origin(src), overwrite=True)
    print(f"committed {m['uri']}: {len(m['files'])} files, {sum(f['size'] for f in m['files']) / 1e6:.0f} MB")


def fetch_plain(store, bucket: str, prefix: str, dest: Path, copy) -> None:
    """The fetch before verification: copy each listed file, compare its size only."""
    from services.common.storage import artifacts
    manifest = artifacts.require_manifest(store, bucket, prefix)
    for f in manifest["files"]:
        target = dest / f["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        copy(f"{prefix}/{f['path']}", target)
        if target.stat().st_size != f["size"]:
            raise RuntimeError(f"{f['path']}: size differs")


def fetch(root: Path, mode: str) -> None:
    from services.common.storage import artifacts
    from services.common.storage.store import LocalStore
    store = LocalStore(root / "storage")
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        if mode == "verify":
            artifacts.fetch_dir(store, "models", NAME, tmp)
        else:
            fetch_plain(store, "models", NAME, Path(tmp), lambda key, target: shutil.copyfile(
                store.root / "models" / key, target))


def s3(reps: int) -> None:
    """Both modes on moto's S3 server (a real S3-protocol process on loopback), alternated, timed
    in-process (the upload is not timed)."""
    from services.common.storage import artifacts
    from services.common.torch_utils import modeling
    from services.common.torch_utils.gguf_import import converted_smollm2, read_origin
    from services.common.storage.s3 import S3Store
    from tests.s3_server import TEST_ACCESS_KEY, TEST_SECRET_KEY, MotoServer
    with MotoServer() as server, tempfile.TemporaryDirectory() as tmp:
        store = S3Store(server.endpoint, TEST_ACCESS_KEY, TEST_SECRET_KEY, region="us-east-1")
        store.ensure_buckets()
        src = converted_smollm2()
        modeling.commit_base_model(store, NAME, src, read_origin(src))
        times: dict[str, list[float]] = {"verify": [], "plain": []}
        for i in range(reps + 1):  # the first round warms up
            for mode in ("verify", "plain"):
                dest = Path(tmp) / f"{mode}-{i}"
                t0 = time.perf_counter()
                if mode == "verify":
                    artifacts.fetch_dir(store, "models", NAME, dest)
                else:
                    fetch_plain(store, "models", NAME, dest,
                                lambda key, target: store.client.fget_object("models", key, str(target)))
                if i:
                    times[mode].append(time.perf_counter() - t0)
                shutil.rmtree(dest)
        for mode, ts in times.items():
            print(f"s3 {mode:6s} median {statistics.median(ts):.2f} s  min {min(ts):.2f}  max {max(ts):.2f}  (n={len(ts)})")
        ratios = [a / b for a, b in zip(times["verify"], times["plain"])]
        print(f"s3 verify/plain median ratio {statistics.median(ratios):.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_fetch_verify", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["prepare", "fetch", "s3"])
    p.add_argument("--root", type=Path)
    p.add_argument("--mode", choices=["verify", "plain"], default="verify")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    if args.action != "s3" and args.root is None:
        p.error("--root is required")
    if args.action == "prepare":
        prepare(args.root)
    elif args.action == "fetch":
        fetch(args.root, args.mode)
    else:
        s3(args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
