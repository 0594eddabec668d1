"""MLflow tracking as a user sees it: a real ``mlflow server`` process (SQLite backend, free port),
jobs through the real services on the tiny Qwen3 (train LoRA → quantize → evaluate), and runs,
params, metrics and lineage read back through the MLflow client; a server stopped during a job
(the job succeeds, nothing is lost once it is back, the record says so); a tracker that never
comes back (the job succeeds, its record says "not tracked"); the model registry sync."""
from __future__ import annotations

import time

import pytest

from services.common.storage import artifacts
from services.common.tracking import tracker as tracking
from services.common.rpc.clients import ServiceClient, state_name
from services.common.generated.ftlab.v1 import jobs_pb2
from services.common.jobs.record import JOBS_BUCKET, JobRecord
from tests.conftest import TINY
from tests.mlflow_server import MlflowServer, free_port

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

TRAIN = {"base_model": TINY, "dataset": "arc", "max_steps": 3, "train_limit": 12, "per_device_batch_size": 4,
         "gradient_accumulation_steps": 1, "max_seq_length": 256, "lora": {"r": 4}}
TRAINED = "Qwen3-tiny-arc_SFT_LoRa4_NoQuant"
QUANTIZED = "Qwen3-tiny-arc_SFT_LoRa4_Int8_BnB"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield srv
    srv.stop()


class Tracked:
    """The services named in ``names`` on loopback ports, tracking into ``uri``."""

    def __init__(self, store, uri: str, monkeypatch, names=("trainer", "quantizer", "evaluator"), max_running=1):
        from services.common.jobs.runtime import RuntimeOptions
        from services.common.rpc.service import RunningService
        from services.evaluator.server import SERVICE as EVALUATOR
        from services.quantizer.server import SERVICE as QUANTIZER
        from services.trainer.server import SERVICE as TRAINER
        monkeypatch.setenv("FTLAB_TRACKING_URI", uri)
        defs = {s.name: s for s in (TRAINER, QUANTIZER, EVALUATOR)}
        self.running = {n: RunningService(defs[n], store, "127.0.0.1:0", RuntimeOptions(cancel_grace_s=2.0,
                                                                                  max_running=max_running))
                        for n in names}
        self.clients = {n: ServiceClient(n, svc.address) for n, svc in self.running.items()}

    def stop(self):
        for c in self.clients.values():
            c.close()
        for svc in self.running.values():
            svc.stop(grace_s=2.0)  # the tracker delivers what it buffered before the service exits


def _notes(store, service: str, job_id: str) -> list[str]:
    """The tracker's notes in the job's record (``ftlab jobs get`` and WatchJob show the same events)."""
    rec = JobRecord.from_json(store.get_bytes(JOBS_BUCKET, f"{service}/{job_id}.json"))
    return [e["message"] for e in rec.events if e["message"].startswith("tracking:")]


def _wait_note(store, service: str, job_id: str, text: str, timeout_s: float = 90.0) -> list[str]:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        notes = _notes(store, service, job_id)
        if any(text in n for n in notes):
            return notes
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} note in the record of {job_id}: {notes}")


def _runs(c: MlflowClient, experiment: str) -> dict[str, object]:
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return {r.info.run_name: r for r in c.search_runs([exp.experiment_id])}


def test_train_quantize_evaluate_are_runs_with_params_curves_and_lineage(server, seeded_store, monkeypatch):
    svc = Tracked(seeded_store, server.uri, monkeypatch)
    try:
        c = svc.clients
        train = c["trainer"].run(TRAIN, "tracked:train:1", timeout_s=300)
        quant = c["quantizer"].run({"source_model": TRAINED, "method": "bnb_int8"}, "tracked:quantize:1", timeout_s=300)
        ev = c["evaluator"].run({"model": QUANTIZED, "tasks": [{"task": "arc", "limit": 4}], "batch_size": 2,
                                 "max_new_tokens": 8}, "tracked:evaluate:1", timeout_s=300)
        assert all(state_name(j.state) == "SUCCEEDED" for j in (train, quant, ev))
    finally:
        svc.stop()
    mc = MlflowClient(server.uri)
    runs = _runs(mc, "tracked")  # the request id's prefix: a flow's experiment
    assert mc.get_experiment_by_name("tracked").tags["mlflow.experimentKind"] == "custom_model_development"
    assert {TRAINED, QUANTIZED} <= set(runs), sorted(runs)
    (e,) = [r for r in runs.values() if r.data.tags.get("ftlab.kind") == "evaluate"]
    t, q = runs[TRAINED], runs[QUANTIZED]
    assert e.info.run_name.startswith(f"eval {QUANTIZED} eval-") and e.data.tags["ftlab.job_id"] == ev.job_id
    assert all(r.info.status == "FINISHED" for r in (t, q, e))

    # training: resolved config as params, ids and digests as tags, output as a link, curves per step
    assert t.data.params["lora.r"] == "4" and t.data.params["max_steps"] == "3"
    assert t.data.params["base_model"] == TINY and t.data.params["peft_method"] == "lora"
    assert t.data.tags["ftlab.job_id"] == train.job_id and t.data.tags["ftlab.kind"] == "train"
    store = seeded_store
    assert t.data.tags["ftlab.base_model_digest"] == artifacts.manifest_digest(
        artifacts.read_manifest(store, "models", TINY))
    assert t.data.tags["ftlab.dataset_digest"] == artifacts.manifest_digest(artifacts.read_manifest(store, "datasets", "arc"))
    assert t.data.tags["ftlab.output.model"] == f"s3://models/{TRAINED}/"
    loss = mc.get_metric_history(t.info.run_id, "loss")
    assert [m.step for m in loss] == [1, 2, 3] and all(m.value > 0 for m in loss)
    assert [m.step for m in mc.get_metric_history(t.info.run_id, "learning_rate")] == [1, 2, 3]
    assert len(mc.get_metric_history(t.info.run_id, "tokens_per_s")) == 3
    assert len(mc.get_metric_history(t.info.run_id, "memory_rss_gb")) == 3
    assert len(mc.get_metric_history(t.info.run_id, "mfu")) == 3
    assert t.data.metrics["final_loss"] == pytest.approx(train.metrics["final_loss"])
    assert t.data.metrics["final_tokens_per_s"] == pytest.approx(train.metrics["tokens_per_s"])
    assert mc.list_artifacts(t.info.run_id) == []  # links to storage, no second copy of the weights

    # quantization: method, options, its report's numbers; lineage to the training run
    assert q.data.params["method"] == "bnb_int8" and q.data.tags["ftlab.parent_run_id"] == t.info.run_id
    assert q.data.tags["ftlab.parent_model"] == TRAINED
    assert {"size_ratio", "weight_rel_error_mean"} <= set(q.data.metrics)
    assert t.info.run_id in q.data.tags["mlflow.note.content"]  # a link the UI renders

    # evaluation: every metric with its CI bounds, speed, memory, engine, dtype; lineage to the quantization
    assert e.data.tags["ftlab.parent_run_id"] == q.info.run_id and e.data.tags["ftlab.evaluated_model"] == QUANTIZED
    acc = e.data.metrics["ai2_arc/accuracy"]
    assert e.data.metrics["ai2_arc/accuracy_ci_low"] <= acc <= e.data.metrics["ai2_arc/accuracy_ci_high"]
    assert {"tokens_per_s", "peak_rss_gb", "ai2_arc/latency_mean_s", "ai2_arc/macro_f1"} <= set(e.data.metrics)
    assert e.data.tags["ftlab.engine"] and e.data.tags["ftlab.dtype"] and e.data.tags["ftlab.quant_tag"] == "Int8_BnB"
    ci = e.data.metrics["ai2_arc/accuracy_ci_low"], e.data.metrics["ai2_arc/accuracy_ci_high"]
    assert f"| ai2_arc/accuracy | {acc:.3f} | [{ci[0]:.3f}, {ci[1]:.3f}] |" in e.data.tags["mlflow.note.content"]
    assert f"[{TINY}](#/models/{TINY})" in t.data.tags["mlflow.note.content"]  # the base: its registry page
    for service, job in (("trainer", train), ("quantizer", quant), ("evaluator", ev)):
        assert not _notes(store, service, job.job_id)  # tracked at once: nothing to say

    # the registry: every committed model, sources in storage, versions linked to their runs
    from ftlab.cli import main
    monkeypatch.setenv("FTLAB_STORAGE", "local")
    monkeypatch.setenv("FTLAB_LOCAL_ROOT", str(store.root))
    assert main(["model", "register"]) == 0
    committed = set(artifacts.list_committed(store, "models"))
    registered = {m.name for m in mc.search_registered_models()}
    assert registered == committed == {TINY, TRAINED, QUANTIZED}
    (qv,) = mc.search_model_versions(f"name = '{QUANTIZED}'")
    assert qv.source == f"s3://models/{QUANTIZED}/" and qv.run_id == q.info.run_id
    assert qv.tags["ftlab.parent_model"] == TRAINED and qv.tags["ftlab.quant_tag"] == "Int8_BnB"
    assert main(["model", "register"]) == 0  # again: nothing new
    assert len(mc.search_model_versions(f"name = '{QUANTIZED}'")) == 1


def test_a_server_stopped_during_a_job_fails_nothing_and_loses_nothing(tmp_path, seeded_store, monkeypatch):
    srv = MlflowServer(tmp_path / "mlflow").start()
    monkeypatch.setattr(tracking, "RETRY_EVERY_S", 1.0)
    svc = Tracked(seeded_store, srv.uri, monkeypatch, names=("trainer",))
    try:
        try:
            trainer = svc.clients["trainer"]

            def outage(ev):  # the server crashes as soon as the job runs (a graceful stop let a
                # kept-alive connection be served on, and the outage was sometimes never seen)
                if ev.type == jobs_pb2.EVENT_TYPE_STATE and ev.state == jobs_pb2.JOB_STATE_RUNNING:
                    srv.stop(kill=True)
            job = trainer.run(TRAIN, "outage:train:1", timeout_s=300, on_event=outage)
            assert state_name(job.state) == "SUCCEEDED"  # the tracker's outage failed nothing
            assert srv.proc is None
            notes = _wait_note(seeded_store, "trainer", job.job_id, "unreachable")
            assert len([n for n in notes if "unreachable" in n]) == 1  # said once, not per retry
            srv.start()  # back, same port and store: the buffered curve and the end are delivered
            notes = _wait_note(seeded_store, "trainer", job.job_id, "delivered to MLflow after")
        finally:
            svc.stop()
        # read back from the restarted server: no third start
        mc = MlflowClient(srv.uri)
        (run,) = _runs(mc, "outage").values()
        assert run.info.status == "FINISHED" and run.data.tags["ftlab.job_id"] == job.job_id
        assert [m.step for m in mc.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
        assert run.data.params["lora.r"] == "4"
    finally:
        srv.stop()


def test_a_tracker_that_never_answers_leaves_the_job_succeeded_and_not_tracked(seeded_store, monkeypatch):
    monkeypatch.setattr(tracking, "RETRY_EVERY_S", 0.5)
    monkeypatch.setattr(tracking, "RETRY_S", 2.0)
    svc = Tracked(seeded_store, f"http://127.0.0.1:{free_port()}", monkeypatch, names=("trainer",))
    try:
        trainer = svc.clients["trainer"]
        job = trainer.run(TRAIN | {"max_steps": 1}, "down:train:1", timeout_s=300)
        assert state_name(job.state) == "SUCCEEDED" and job.metrics["final_loss"] > 0
        notes = _wait_note(seeded_store, "trainer", job.job_id, "not tracked")
        assert "unreachable" in notes[0] and "not tracked in MLflow" in notes[-1]
        assert artifacts.read_manifest(seeded_store, "models", TRAINED) is not None
    finally:
        svc.stop()


def test_a_flow_run_groups_its_jobs_runs_while_they_run(server, seeded_store, monkeypatch):
    """The flow's parent run exists from its start and a job's run is nested under it while the
    job still runs (a Phase watched live); a job of the same experiment not of this flow is not."""
    from services.common.tracking import flowrun
    monkeypatch.setattr(flowrun, "FLUSH_S", 0.5)
    svc = Tracked(seeded_store, server.uri, monkeypatch, names=("trainer",))
    mc = MlflowClient(server.uri)
    flow = flowrun.FlowRunTracker("live", "run-1", ["live:train:ours"], time.time(), uri=server.uri)
    seen: dict[str, str] = {}

    def watch(ev):  # at each progress event: is the job's run nested yet, and is it still running?
        if ev.type != jobs_pb2.EVENT_TYPE_PROGRESS or "status" in seen:
            return
        run = tracking.find_run(mc, f"tags.`ftlab.request_id` = 'live:train:ours'")
        if run is not None and run.data.tags.get("mlflow.parentRunId"):
            seen.update(parent=run.data.tags["mlflow.parentRunId"], status=run.info.status)
        else:
            time.sleep(1.0)  # holds the watch, not the job: the next event comes a little later
    try:
        trainer = svc.clients["trainer"]
        ours = trainer.run(TRAIN | {"max_steps": 6, "train_limit": 24}, "live:train:ours", timeout_s=600,
                           on_event=watch)
        other = trainer.run(TRAIN | {"max_steps": 1, "output_name": "Qwen3-tiny-not-this-flow"}, "live:train:not-this-flow",
                            timeout_s=600)
        assert flow.parent_id is not None
        assert mc.get_run(flow.parent_id).info.status == "RUNNING"  # the flow goes on
        assert seen == {"parent": flow.parent_id, "status": "RUNNING"}, seen  # nested while it ran
        steps = [{"key": "train", "status": "succeeded", "job_id": ours.job_id}]
        assert flow.finish(steps, "s3://reports/live/run-1/") == flow.parent_id
    finally:
        flow._stop.set()
        svc.stop()
    parent = mc.get_run(flow.parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "live run-1"
    assert parent.data.tags["ftlab.report"] == "s3://reports/live/run-1/"
    assert parent.data.metrics == {"steps_succeeded": 1.0, "jobs_tracked": 1.0}
    runs = {r.data.tags["ftlab.job_id"]: r for r in mc.search_runs([parent.info.experiment_id])
            if r.data.tags.get("ftlab.kind") == "train"}
    assert runs[ours.job_id].data.tags["mlflow.parentRunId"] == flow.parent_id
    assert runs[ours.job_id].data.tags["ftlab.flow_run"] == "run-1"
    assert "mlflow.parentRunId" not in runs[other.job_id].data.tags
