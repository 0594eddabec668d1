"""A real S3 endpoint for tests: moto's S3 server in a separate process on a loopback port."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TEST_ACCESS_KEY = "testing"
TEST_SECRET_KEY = "testing"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto's S3 server (``python -m moto.server``) as a child process.

    A separate process, not moto's in-process mocks, so the code under test talks real HTTP through
    the minio SDK, and tests can kill the server to simulate an outage. ``start()`` after ``stop()``
    listens on the same port again, so existing clients reconnect; but moto keeps everything in
    memory, so a restart loses every bucket and object (call ``ensure_buckets()`` again).
    """

    def __init__(self, port: int | None = None, start_timeout_s: float = 20.0, stop_grace_s: float = 5.0):
        self.port = port or free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self._proc: subprocess.Popen | None = None
        # moto logs every request to stderr: a file, not a pipe nobody reads, which would fill and block it
        self._log_dir = Path(tempfile.mkdtemp(prefix="moto-"))
        self._log = self._log_dir / "server.log"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> MotoServer:
        if self.running:
            return self
        # credentials and region for the child only: moto needs some, the test process keeps its own
        env = {**os.environ, "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
               "AWS_DEFAULT_REGION": "us-east-1"}
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._wait_until_up()
        return self

    def _wait_until_up(self) -> None:
        # no proxies: a test's HTTP(S)_PROXY must not intercept loopback polling
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited with code {self._proc.returncode} before answering on "
                                   f"{self.endpoint}; its output:\n{self.output()}")
            try:
                with opener.open(self.url + "/", timeout=1):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto server did not answer on {self.endpoint} within "
                                   f"{self.start_timeout_s:.0f} s; its output:\n{self.output()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(self.stop_grace_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def output(self, tail_chars: int = 4000) -> str:
        """The last ``tail_chars`` of the server's stdout/stderr, for error messages."""
        try:
            return self._log.read_text(errors="replace")[-tail_chars:]
        except OSError:
            return "(no output)"

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self._log_dir, ignore_errors=True)  # its errors were raised with output() already


class TcpRelay:
    """A loopback TCP relay in front of a server (e.g. the moto S3 server), for outage tests.

    ``block()`` drops every open connection and answers new ones by closing them at once, as an
    unreachable endpoint does; ``unblock()`` relays again. It lets a test stop and restart the
    S3 server process and decide when clients see it back: moto loses its data on restart, so the
    test recreates the buckets first, as a real MinIO restart (data on disk) would have them.
    """

    def __init__(self, target_port: int):
        import socket as _socket
        import threading
        self.target_port = target_port
        self._server = _socket.socket()
        self._server.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self.endpoint = f"127.0.0.1:{self.port}"
        self.blocked, self.refused = False, 0
        self._conns: set = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True, name="tcp-relay").start()

    def _accept_loop(self) -> None:
        import socket as _socket
        import threading
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.blocked:
                self.refused += 1
                client.close()
                continue
            try:
                upstream = _socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                self.refused += 1
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
            with self._lock:
                self._conns -= {src, dst}

    def block(self) -> None:
        import socket as _socket
        self.blocked = True
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            try:
                s.shutdown(_socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def unblock(self) -> None:
        self.blocked = False

    def close(self) -> None:
        self._closed = True
        self.block()
        self._server.close()
