"""``ftlab up`` refuses addresses another process already serves (another stack on the default
ports), and a service cannot share its port with another server (gRPC's so_reuseport is off)."""
from __future__ import annotations

import socket

import pytest

from services.common.rpc.clients import ServiceUnavailable


def _listener() -> tuple[socket.socket, str]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, f"127.0.0.1:{s.getsockname()[1]}"


def test_port_in_use_sees_a_listener_only():
    from ftlab.stack import port_in_use
    s, addr = _listener()
    try:
        assert port_in_use(addr)
    finally:
        s.close()
    assert not port_in_use(addr)
    assert not port_in_use("not-an-address")


def test_up_refuses_a_taken_address_before_starting_anything(monkeypatch, tmp_path):
    from ftlab import stack
    s, addr = _listener()
    monkeypatch.setattr(stack, "STATE_DIR", tmp_path)
    monkeypatch.setenv("FTLAB_TRAINER_ADDR", addr)
    started = []
    monkeypatch.setattr(stack.subprocess, "Popen", lambda *a, **k: started.append(a))
    try:
        with pytest.raises(ServiceUnavailable, match=f"trainer {addr}.*FTLAB_TRAINER_ADDR"):
            stack.up(timeout_s=1)
    finally:
        s.close()
    assert started == [] and not (tmp_path / "run").exists()  # nothing written


def test_a_second_server_cannot_bind_a_served_port():
    from services.common.rpc.server import build_server
    from services.common.generated.ftlab.v1 import trainer_pb2_grpc
    first, port, _ = build_server("127.0.0.1:0", trainer_pb2_grpc.TrainerServiceServicer(),
                                  trainer_pb2_grpc.add_TrainerServiceServicer_to_server, "ftlab.v1.TrainerService")
    first.start()
    try:
        with pytest.raises(RuntimeError):  # gRPC's default (so_reuseport) bound it and split the connections
            build_server(f"127.0.0.1:{port}", trainer_pb2_grpc.TrainerServiceServicer(),
                         trainer_pb2_grpc.add_TrainerServiceServicer_to_server, "ftlab.v1.TrainerService")
    finally:
        first.stop(0)


def _free() -> str:
    s, addr = _listener()
    s.close()
    return addr


def _own_stack(monkeypatch, tmp_path):
    """ftlab.stack with its state folder, storage and three free ports of this test's own."""
    from ftlab import stack
    monkeypatch.setattr(stack, "STATE_DIR", tmp_path)
    for svc in ("TRAINER", "QUANTIZER", "EVALUATOR"):
        monkeypatch.setenv(f"FTLAB_{svc}_ADDR", _free())
    monkeypatch.setenv("FTLAB_LOCAL_ROOT", str(tmp_path / "storage"))
    return stack


def test_up_says_at_once_why_a_service_exited_at_start_and_down_copes(monkeypatch, tmp_path):
    # A bad setting stops every service at start: up reports the first to exit, with its log line,
    # now, not after its timeout, and down then stops whatever is left without a traceback.
    stack = _own_stack(monkeypatch, tmp_path)
    monkeypatch.setenv("FTLAB_CPU_THREADS", "all")
    try:
        with pytest.raises(ServiceUnavailable, match=r"(trainer|quantizer|evaluator) service exited at start \(code 2\).*"
                                                     r"FTLAB_CPU_THREADS='all': must be a whole number >= 1"):
            stack.up(timeout_s=300)
    finally:
        stack.down(grace_s=5)
    assert stack.running() == {}


def test_up_names_the_service_that_died_and_stops_the_others_it_started(monkeypatch, tmp_path):
    # The evaluator dies at start (as with FTLAB_PLACEMENT=ray and no Ray in its environment) while
    # up waits on the trainer: up names the evaluator at once, not the trainer after its timeout,
    # and leaves no half-started stack behind.
    stack = _own_stack(monkeypatch, tmp_path)
    monkeypatch.setenv("FTLAB_EVALUATOR_PYTHON", "/bin/false")
    try:
        with pytest.raises(ServiceUnavailable, match=r"^evaluator service exited at start \(code 1\)"):
            stack.up(timeout_s=300)
        assert stack.running() == {}
    finally:
        stack.down(grace_s=5)
