"""Generate the Python gRPC stubs from proto/ into services/common/generated/ (run by `make proto`).

protoc writes `from ftlab.v1 import x_pb2`; we rewrite that to the package path so the stubs
import without touching sys.path. The output is committed and never edited by hand;
tests/unit/test_proto_fresh.py regenerates into a temp dir and fails when it differs.
"""
from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "services" / "common" / "generated"
PACKAGE = "services.common.generated"


def generate(out_dir: Path) -> list[Path]:
    protos = sorted(PROTO_DIR.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
        args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *[str(p.relative_to(PROTO_DIR)) for p in protos]]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        written = []
        for src in sorted(Path(tmp).rglob("*.py*")):
            rel = src.relative_to(tmp)
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            text = re.sub(r"^from ftlab\.v1 import", f"from {PACKAGE}.ftlab.v1 import", src.read_text(), flags=re.M)
            dest.write_text(text)
            written.append(dest)
    for d in [out_dir, *[p for p in out_dir.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR
    for p in generate(out):
        print(p.relative_to(out.parent))
