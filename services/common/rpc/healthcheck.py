"""``ftlab-healthcheck``: is ONE service SERVING? For Docker ``HEALTHCHECK`` and compose healthchecks.

Exit 0 when the service answers SERVING through ``grpc.health.v1``, 1 otherwise (not started,
shutting down, unreachable), 2 on bad arguments. It prints one line, which Docker keeps in
``docker inspect`` as the health log. It imports only the torch-free client, so a check costs a
fraction of a second even inside the GPU images.
"""
from __future__ import annotations

import argparse
import sys

from services.common.contract.settings import SERVICES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ftlab-healthcheck", description=__doc__.splitlines()[0])
    p.add_argument("--service", required=True, choices=SERVICES)
    p.add_argument("--address", help="HOST:PORT (default: FTLAB_<SERVICE>_ADDR or 127.0.0.1:<default port>)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = p.parse_args(argv)

    from services.common.rpc.clients import ServiceClient
    with ServiceClient(args.service, args.address) as client:
        ok = client.healthy(timeout_s=args.timeout)
        print(f"{args.service} {client.address} {'SERVING' if ok else 'NOT SERVING'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
