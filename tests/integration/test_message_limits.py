"""Message limits (issue 14, fault 3): a job that fails with a 5 MiB error and logs a 5 MiB line
stays readable through the real client — GetJob, WatchJob and ListJobs — because the record caps
its error text and log lines (head and tail kept, the cut counted), the client's limits are the
server's, and ListJobs pages are bounded in bytes as well as in count."""
from __future__ import annotations

from dataclasses import replace

from services.common.rpc.clients import ServiceClient
from services.common.generated.ftlab.v1 import jobs_pb2
from services.common.jobs.record import MAX_EVENT_MESSAGE_CHARS, MAX_JOB_ERROR_CHARS
from services.common.jobs.runtime import RuntimeOptions
from services.common.rpc.service import RunningService, Security
from tests.hardening import SOURCE, make_source

FIVE_MIB = 5 * 1024 * 1024


def huge_failure(ctx, cfg):
    """A recipe that logs one 5 MiB line, then fails with a 5 MiB error."""
    ctx.log("L" * FIVE_MIB + "end-of-log")
    raise RuntimeError("\N{GRINNING FACE}" * (FIVE_MIB // 4) + "end-of-error")  # 4 bytes a character


def test_five_mib_error_stays_readable(store, monkeypatch):
    from services.quantizer.server import SERVICE as QUANTIZER
    monkeypatch.setenv("FTLAB_GRPC_MAX_MESSAGE_BYTES", str(64 * 1024))  # small, so 3 records pass it
    make_source(store)
    sdef = replace(QUANTIZER, recipes={"quantize": "tests.integration.test_message_limits:huge_failure"})
    svc = RunningService(sdef, store, "127.0.0.1:0", RuntimeOptions(max_running=3), security=Security())
    try:
        with ServiceClient("quantizer", svc.address) as client:
            ids = [client.submit({"source_model": SOURCE, "method": "bnb_int8", "output_name": f"o{i}"}).job_id
                   for i in range(3)]
            jobs = [client.wait(j, timeout_s=120) for j in ids]
            for job in jobs:
                assert job.state == jobs_pb2.JOB_STATE_FAILED
                assert len(job.error) <= MAX_JOB_ERROR_CHARS
                assert job.error.startswith("RuntimeError: \N{GRINNING FACE}") and job.error.endswith("end-of-error")
                assert "characters cut" in job.error
            logs = [ev.message for ev in client.watch(ids[0]) if ev.type == jobs_pb2.EVENT_TYPE_LOG]
            assert len(logs) == 1 and len(logs[0]) <= MAX_EVENT_MESSAGE_CHARS and logs[0].endswith("end-of-log")
            # 3 jobs of ~32 KB each: a 64 KiB page cannot hold them all
            first = client.list(page_size=50)
            assert first.next_page_token and 1 <= len(first.jobs) < 3
            assert first.ByteSize() <= 64 * 1024
            assert sorted(j.job_id for j in client.list_all()) == sorted(ids)
    finally:
        svc.stop(1.0)
