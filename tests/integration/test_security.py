"""Security over real gRPC on loopback: bearer-token auth in one interceptor, TLS and mutual TLS
with a CA made here, names that could reach storage or the filesystem, safe model loading."""
from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.rpc.auth import load_tokens
from services.common.rpc.clients import ServiceClient, ServiceUnavailable, Unauthenticated, state_name
from services.common.contract.errors import NotFoundError, ValidationError
from services.common.generated.ftlab.v1 import jobs_pb2, quantizer_pb2, quantizer_pb2_grpc
from services.common.jobs.runtime import RuntimeOptions
from services.common.rpc.service import RunningService, Security
from services.common.rpc.tls import channel_credentials, server_credentials
from tests.conftest import snapshot
from tests.hardening import make_source, service_def, spec

ROOT = Path(__file__).resolve().parents[2]
TOKEN, OLD_TOKEN = "t" * 20 + "-current", "o" * 20 + "-previous"


@pytest.fixture
def secured(store):
    make_source(store)
    svc = RunningService(service_def(), store, "127.0.0.1:0", RuntimeOptions(cancel_grace_s=1.0),
                         security=Security(tokens=(TOKEN, OLD_TOKEN)))
    yield svc
    svc.stop(1.0)


def _all_rpcs(stub):
    """Every RPC of the service with a harmless request (each must be refused without a token)."""
    return {
        "SubmitQuantize": lambda md: stub.SubmitQuantize(quantizer_pb2.SubmitQuantizeRequest(), metadata=md),
        "GetJob": lambda md: stub.GetJob(jobs_pb2.GetJobRequest(job_id="x"), metadata=md),
        "ListJobs": lambda md: stub.ListJobs(jobs_pb2.ListJobsRequest(), metadata=md),
        "WatchJob": lambda md: list(stub.WatchJob(jobs_pb2.WatchJobRequest(job_id="x"), metadata=md)),
        "CancelJob": lambda md: stub.CancelJob(jobs_pb2.CancelJobRequest(job_id="x"), metadata=md),
    }


@pytest.mark.parametrize("metadata", [None, (("authorization", "Bearer wrong-token-wrong-token"),),
                                      (("authorization", TOKEN),), (("authorization", f"Basic {TOKEN}"),),
                                      (("authorization", "Bearer " + TOKEN[:-1]),)],
                         ids=["missing", "wrong", "no-scheme", "basic", "prefix"])
def test_every_rpc_but_health_needs_the_token_and_a_refused_call_writes_nothing(secured, store, metadata):
    before = snapshot(store)
    with grpc.insecure_channel(secured.address) as ch:
        for name, call in _all_rpcs(quantizer_pb2_grpc.QuantizerServiceStub(ch)).items():
            with pytest.raises(grpc.RpcError) as exc:
                call(metadata)
            assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        reflection = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=metadata)
        with pytest.raises(grpc.RpcError) as exc:
            next(reflection)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # health stays open: probes and `ftlab doctor` need no secret
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    assert snapshot(store) == before and secured.runtime.list()[0] == []


def test_the_client_takes_the_token_from_env_or_file_and_both_rotation_tokens_work(secured, store, tmp_path,
                                                                                   monkeypatch):
    with ServiceClient("quantizer", secured.address, token=None) as anon:
        with pytest.raises(Unauthenticated, match="refused"):
            anon.submit(spec(1), "r1")
        assert anon.healthy()
    monkeypatch.setenv("FTLAB_AUTH_TOKEN", TOKEN)
    with ServiceClient("quantizer", secured.address) as c:  # from the environment, never from code
        job = c.run(spec(1), "r1", timeout_s=60)
        assert state_name(job.state) == "SUCCEEDED"
    monkeypatch.delenv("FTLAB_AUTH_TOKEN")
    (tmp_path / "token").write_text(f"# rotated on Monday\n{OLD_TOKEN}\n")
    monkeypatch.setenv("FTLAB_AUTH_TOKEN_FILE", str(tmp_path / "token"))
    with ServiceClient("quantizer", secured.address) as c:
        assert [j.request_id for j in c.list_all()] == ["r1"]


def test_token_settings_are_checked():
    assert load_tokens({}) == []
    assert load_tokens({"FTLAB_AUTH_TOKEN": f" {TOKEN} , {OLD_TOKEN} "}) == [TOKEN, OLD_TOKEN]
    with pytest.raises(ValidationError, match="at least 16"):
        load_tokens({"FTLAB_AUTH_TOKEN": "short"})
    with pytest.raises(ValidationError, match="FTLAB_AUTH_TOKEN_FILE"):
        load_tokens({"FTLAB_AUTH_TOKEN_FILE": "/nonexistent/token"})


def test_no_token_on_a_public_address_warns(store, caplog):
    svc = RunningService(service_def(), store, "0.0.0.0:0", security=Security())
    try:
        assert any("WITHOUT authentication" in r.getMessage() for r in caplog.records)
    finally:
        svc.stop(1.0)


# ---------------------------------------------------------------- TLS

def _pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all made here;
    plus a second, unrelated CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    out: dict[str, Path] = {}

    def write(name, data):
        out[name] = tmp_path / name
        out[name].write_bytes(data)

    def key_pem(key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def cert(subject, key, issuer, issuer_key, ca=False, san=None, usage=None):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if usage:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return b.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    for ca_name in ("ca", "other-ca"):
        k = ec.generate_private_key(ec.SECP256R1())
        write(f"{ca_name}.pem", cert(ca_name, k, ca_name, k, ca=True))
        if ca_name == "ca":
            ca_key = k
    for name, usage, san in (("server", ExtendedKeyUsageOID.SERVER_AUTH,
                              [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             ("client", ExtendedKeyUsageOID.CLIENT_AUTH, None)):
        k = ec.generate_private_key(ec.SECP256R1())
        write(f"{name}.pem", cert(name, k, "ca", ca_key, san=san, usage=usage))
        write(f"{name}.key", key_pem(k))
    return out


@pytest.fixture
def pki(tmp_path):
    return _pki(tmp_path)


def _serve(store, env, tokens=()):
    make_source(store)
    return RunningService(service_def(), store, "127.0.0.1:0", RuntimeOptions(cancel_grace_s=1.0),
                          security=Security(tuple(tokens), server_credentials(env)))


def test_tls_server_is_verified_by_the_client(store, pki):
    svc = _serve(store, {"FTLAB_TLS_CERT": str(pki["server.pem"]), "FTLAB_TLS_KEY": str(pki["server.key"])})
    try:
        good = channel_credentials({"FTLAB_TLS_CA": str(pki["ca.pem"])})
        with ServiceClient("quantizer", svc.address, token=None, credentials=good) as c:
            assert state_name(c.run(spec(1), "tls-1", timeout_s=60).state) == "SUCCEEDED"
        wrong_ca = channel_credentials({"FTLAB_TLS_CA": str(pki["other-ca.pem"])})
        for creds in (wrong_ca, None):  # an impostor's CA, or plaintext against TLS: no connection
            with ServiceClient("quantizer", svc.address, token=None, credentials=creds, timeout_s=3) as c:
                with pytest.raises(ServiceUnavailable):
                    c.list()
                assert not c.healthy()
    finally:
        svc.stop(1.0)


def test_mutual_tls_and_token_together(store, pki):
    env = {"FTLAB_TLS_CERT": str(pki["server.pem"]), "FTLAB_TLS_KEY": str(pki["server.key"]),
           "FTLAB_TLS_CA": str(pki["ca.pem"])}
    svc = _serve(store, env, tokens=[TOKEN])
    try:
        with_cert = channel_credentials({"FTLAB_TLS_CA": str(pki["ca.pem"]),
                                         "FTLAB_TLS_CLIENT_CERT": str(pki["client.pem"]),
                                         "FTLAB_TLS_CLIENT_KEY": str(pki["client.key"])})
        without_cert = channel_credentials({"FTLAB_TLS_CA": str(pki["ca.pem"])})
        with ServiceClient("quantizer", svc.address, token=TOKEN, credentials=without_cert, timeout_s=3) as c:
            with pytest.raises(ServiceUnavailable):
                c.list()
        with ServiceClient("quantizer", svc.address, token=None, credentials=with_cert) as c:
            with pytest.raises(Unauthenticated):
                c.list()
        with ServiceClient("quantizer", svc.address, token=TOKEN, credentials=with_cert) as c:
            assert list(c.list().jobs) == []
    finally:
        svc.stop(1.0)


def test_tls_settings_are_checked(pki):
    with pytest.raises(ValidationError, match="set together"):
        server_credentials({"FTLAB_TLS_CERT": str(pki["server.pem"])})
    with pytest.raises(ValidationError, match="cannot read"):
        channel_credentials({"FTLAB_TLS_CA": "/nonexistent/ca.pem"})
    assert server_credentials({}) is None and channel_credentials({}) is None


# ---------------------------------------------------------------- names that reach storage

EVIL = ["../../etc/passwd", "/etc/passwd", "a/../../b", "..", "x\ny", "a\x00b", "a" * 300, "models/../jobs",
        "C:\\windows", "a b", "%2e%2e%2f"]


@pytest.fixture
def real_services(store):
    """The three real servicers (their own validation), on a store holding nothing but buckets."""
    from services.evaluator.server import SERVICE as EVALUATOR
    from services.quantizer.server import SERVICE as QUANTIZER
    from services.trainer.server import SERVICE as TRAINER
    running = {s.name: RunningService(s, store, "127.0.0.1:0", security=Security()) for s in (TRAINER, QUANTIZER,
                                                                                          EVALUATOR)}
    clients = {n: ServiceClient(n, s.address, token=None, credentials=None) for n, s in running.items()}
    yield clients
    for c in clients.values():
        c.close()
    for s in running.values():
        s.stop(1.0)


NAME_FIELDS = [  # (service, field, the spec with the evil value put in that field)
    ("trainer", "base_model", lambda v: {"base_model": v, "dataset": "arc"}),
    ("trainer", "dataset", lambda v: {"base_model": "m", "dataset": v}),
    ("trainer", "output_name", lambda v: {"base_model": "m", "dataset": "arc", "output_name": v}),
    ("quantizer", "source_model", lambda v: {"source_model": v, "method": "bnb_int8"}),
    ("quantizer", "output_name", lambda v: {"source_model": "m", "method": "bnb_int8", "output_name": v}),
    ("evaluator", "model", lambda v: {"model": v, "tasks": [{"task": "arc"}]}),
    ("evaluator", "eval_id", lambda v: {"model": "m", "eval_id": v, "tasks": [{"task": "arc"}]}),
    ("evaluator", "tasks[0].dataset", lambda v: {"model": "m", "tasks": [{"task": "arc", "dataset": v}]}),
    ("evaluator", "tasks[0].split", lambda v: {"model": "m", "tasks": [{"task": "arc", "split": v}]}),
    ("quantizer", "dataset", lambda v: {"source_model": "m", "method": "bnb_int8", "dataset": v}),
]


@pytest.mark.parametrize("service,field,make", NAME_FIELDS, ids=[f"{s}.{f}" for s, f, _ in NAME_FIELDS])
def test_path_traversal_through_every_name_field_is_refused_and_writes_nothing(real_services, store, tmp_path,
                                                                              service, field, make):
    outside = sorted(p for p in tmp_path.rglob("*") if "storage" not in p.parts)
    before = snapshot(store)
    c = real_services[service]
    for value in EVIL:
        with pytest.raises((ValidationError, NotFoundError)) as exc:
            c.submit(make(value), f"evil-{field}")
        if isinstance(exc.value, ValidationError):
            assert field.split("[")[0] in str(exc.value), (value, str(exc.value))
    assert snapshot(store) == before
    assert sorted(p for p in tmp_path.rglob("*") if "storage" not in p.parts) == outside


@pytest.mark.parametrize("service", ["trainer", "quantizer", "evaluator"])
def test_evil_ids_in_job_rpcs_are_refused(real_services, store, service):
    before = snapshot(store)
    c = real_services[service]
    for value in EVIL:
        with pytest.raises((ValidationError, NotFoundError)):
            c.get(value)
        with pytest.raises((ValidationError, NotFoundError)):
            c.cancel(value)
        with pytest.raises((ValidationError, NotFoundError)):
            list(c.watch(value))
        with pytest.raises(ValidationError, match="page_token"):
            c.list(page_token=value)
    for value in ("x\ny", "a\x00b", "r" * 300):  # request ids are not keys, but are bounded
        with pytest.raises(ValidationError, match="request_id"):
            real_services["quantizer"].submit({"source_model": "m", "method": "bnb_int8"}, value)
    assert snapshot(store) == before


# ---------------------------------------------------------------- safe loading

def _code():
    for top in ("services", "flows"):
        for p in (ROOT / top).rglob("*.py"):
            if "generated" not in p.parts:
                yield p, p.read_text()


def test_no_remote_code_and_no_unsafe_unpickling_anywhere():
    for path, text in _code():
        assert not re.search(r"trust_remote_code\s*=\s*True", text), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
    modeling = (ROOT / "services/common/torch_utils/modeling.py").read_text()
    assert modeling.count("use_safetensors=True") + modeling.count('"use_safetensors": True') >= 2


def test_a_pickled_checkpoint_is_not_loaded(tmp_path, tiny_model_dir):
    """A model folder with weights only as a pickle (pytorch_model.bin, which can run code when
    unpickled) is refused by the loader every recipe uses."""
    import shutil

    import torch

    from services.common.torch_utils import modeling
    model_dir = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, model_dir)
    from safetensors.torch import load_file
    for f in model_dir.glob("*.safetensors"):
        torch.save(load_file(f), model_dir / "pytorch_model.bin")
        f.unlink()
    with pytest.raises(OSError, match="safetensors"):
        modeling.load_causal_lm(model_dir, torch.device("cpu"))
    assert os.path.exists(model_dir / "pytorch_model.bin")
