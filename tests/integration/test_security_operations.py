"""What an operator relies on: Prometheus metrics per service, JSON logs carrying job and request
ids, and `ftlab doctor` naming what is wrong and how to fix it (real services on loopback)."""
from __future__ import annotations

import json
import logging
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ftlab import doctor
from services.common.rpc.clients import ServiceClient, state_name
from services.common.jobs.runtime import RuntimeOptions
from services.common.rpc.service import RunningService, Security
from services.common.contract.settings import JsonFormatter, ServiceSettings
from tests.hardening import CTL_ENV, make_source, service_def, spec
from tests.s3_server import free_port

TOKEN = "doctor-token-0123456789"


@pytest.fixture
def svc(store, tmp_path, monkeypatch):
    monkeypatch.setenv(CTL_ENV, str(tmp_path))
    make_source(store)
    s = RunningService(service_def(), store, "127.0.0.1:0", RuntimeOptions(cancel_grace_s=1.0),
                       security=Security(tokens=(TOKEN,)), metrics_port=0)
    yield s
    s.stop(1.0)


def _metrics(port: int) -> dict:
    text = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_endpoint_reports_queue_states_and_durations(svc, caplog):
    m = _metrics(svc.metrics_port)
    assert m[("ftlab_queue_length", (("service", "quantizer"),))] == 0
    caplog.set_level(logging.INFO, logger="ftlab.runtime")
    with ServiceClient("quantizer", svc.address, token=TOKEN, credentials=None) as c:
        job = c.run(spec(1), "metrics-1", timeout_s=60)
    assert state_name(job.state) == "SUCCEEDED"
    m = _metrics(svc.metrics_port)
    assert m[("ftlab_jobs", (("service", "quantizer"), ("state", "SUCCEEDED")))] == 1
    assert m[("ftlab_jobs", (("service", "quantizer"), ("state", "FAILED")))] == 0
    assert m[("ftlab_running_jobs", (("service", "quantizer"),))] == 0
    labels = (("kind", "quantize"), ("service", "quantizer"), ("state", "SUCCEEDED"))
    assert m[("ftlab_job_duration_seconds_count", labels)] == 1
    assert m[("ftlab_job_duration_seconds_sum", labels)] > 0

    # the runtime's log records carry the job and request ids into the JSON logs
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if getattr(r, "job_id", "") == job.job_id]
    assert lines and all(ln["request_id"] == "metrics-1" and ln["service"] == "quantizer" for ln in lines)
    assert any("SUCCEEDED" in ln["msg"] for ln in lines)


def test_metrics_port_setting():
    assert ServiceSettings.from_env("trainer", {}).metrics_port is None
    assert ServiceSettings.from_env("trainer", {"FTLAB_METRICS_PORT": "9101"}).metrics_port == 9101
    with pytest.raises(Exception, match="FTLAB_METRICS_PORT"):
        ServiceSettings.from_env("trainer", {"FTLAB_METRICS_PORT": "http"})



def test_bad_service_settings_are_listed_together():
    with pytest.raises(Exception) as exc:
        ServiceSettings.from_env("trainer", {"FTLAB_WORKER": "threads", "FTLAB_CANCEL_GRACE_S": "-1",
                                             "FTLAB_CPU_THREADS": "all"})
    assert "FTLAB_WORKER='threads'" in str(exc.value) and "FTLAB_CANCEL_GRACE_S='-1'" in str(exc.value)
    assert "FTLAB_CPU_THREADS='all'" in str(exc.value)
    assert ServiceSettings.from_env("trainer", {"FTLAB_WORKER": "spawn", "FTLAB_CPU_THREADS": "1"})


def _env(svc, store, **kw):
    return {"FTLAB_STORAGE": "local", "FTLAB_LOCAL_ROOT": str(store.root), "FTLAB_QUANTIZER_ADDR": svc.address,
            "FTLAB_AUTH_TOKEN": TOKEN, **kw}


def test_doctor_passes_on_a_working_setup_and_names_each_fix(svc, store):
    out: list[str] = []
    assert doctor.run(_env(svc, store), services=("quantizer",), out=out.append) == 0, out
    text = "\n".join(out)
    assert "OK    quantizer" in text and "token accepted" in text and "version" in text
    assert "OK    storage" in text

    out.clear()
    bad = _env(svc, store, FTLAB_AUTH_TOKEN="not-the-right-token-at-all", FTLAB_STORAGE="s3",
               FTLAB_S3_ENDPOINT=f"127.0.0.1:{free_port()}", FTLAB_TRAINER_ADDR=f"127.0.0.1:{free_port()}")
    assert doctor.run(bad, services=("quantizer", "trainer"), out=out.append) == 1
    text = "\n".join(out)
    assert "FAIL  quantizer" in text and "refused" in text and "fix: set FTLAB_AUTH_TOKEN" in text
    assert "FAIL  storage" in text and "fix: check FTLAB_S3_ENDPOINT" in text
    assert "FAIL  trainer" in text and "not answering SERVING" in text  # nothing listens there
