"""The study's PTQ methods on the real pretrained model (SmolLM2-135M-Instruct, Llama architecture)
through the real quantizer and evaluator: llm-compressor's GPTQ, AWQ, SmoothQuant and rotation
mappings work for it, each output loads with plain ``from_pretrained`` and is scored, and the
degradation table shows real (non-zero) degradation against the parent. One tiny calibration set
and a few evaluation items keep it short; the measured table is in docs/QUANTIZER.md
(``bench/bench_ptq_real.py``).

`make test` runs GPTQ alone (the cheapest of the four, ~1 min of quantizing; every method on the
tiny model is tests/integration/test_ptq_methods.py): the real model through llm-compressor, the
reload, the evaluator and the degradation table. All four methods and the parent's 4-bit KV cache
on the real model are the long form, ``make check-ptq`` (6 min of the suite's time before)."""
from __future__ import annotations

import json
import math

import pytest

from flows.report_ptq import degradation_table
from services.common.storage import artifacts
from services.common.rpc.clients import state_name
from tests.conftest import REAL

SMALL = {"dataset": "arc", "calibration": {"num_samples": 2, "max_seq_length": 48},
         "report": {"num_prompts": 2, "max_seq_length": 96}}
METHODS = {  # SmolLM2's layers are 576 and 1536 wide: group size 64
    f"{REAL}_GPTQ_w4_g64_headfp32": {"method": "gptq", "group_size": 64},
    f"{REAL}_AWQ_w4_g64_headfp32": {"method": "awq", "group_size": 64},
    f"{REAL}_QuaRot_w4_g64_headfp32": {"method": "quarot", "group_size": 64},
    f"{REAL}_SmoothQuant_w8_headfp32": {"method": "smoothquant"},
}
GPTQ = f"{REAL}_GPTQ_w4_g64_headfp32"
EVAL = {"tasks": [{"task": "arc", "limit": 3}], "batch_size": 3, "max_new_tokens": 8}


@pytest.fixture
def real_services(real_store):
    from services.common.rpc.clients import ServiceClient
    from services.common.jobs.runtime import RuntimeOptions
    from services.common.rpc.service import RunningService
    from services.evaluator.server import SERVICE as EVALUATOR
    from services.quantizer.server import SERVICE as QUANTIZER
    # Two quantize jobs at a time, one torch thread each (FTLAB_CPU_THREADS, set by the test): GPTQ's
    # column loop is mostly Python, so on two cores this halves the wall time, where two jobs of two
    # threads each ran 4.5x slower apiece (OpenMP threads spinning against each other).
    running = {s.name: RunningService(s, real_store, "127.0.0.1:0", RuntimeOptions(max_running=m))
               for s, m in ((QUANTIZER, 2), (EVALUATOR, 1))}
    clients = {n: ServiceClient(n, svc.address) for n, svc in running.items()}
    yield clients
    for c in clients.values():
        c.close()
    for svc in running.values():
        svc.stop(grace_s=2.0)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # up to ten jobs, each a child process: minutes on a loaded 2-core CPU
@pytest.mark.parametrize("methods,kv4", [
    pytest.param([GPTQ], False, id="gptq"),
    pytest.param(list(METHODS), True, id="all-methods", marks=pytest.mark.long),   # make check-ptq
])
def test_study_methods_on_the_real_model(real_store, real_services, tmp_path, monkeypatch, methods, kv4):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    monkeypatch.setenv("FTLAB_DEVICE", "cpu")
    monkeypatch.setenv("FTLAB_CPU_THREADS", "1")  # each job's environment is the service's at its start
    q, e = real_services["quantizer"], real_services["evaluator"]
    quantize = {name: q.submit({"source_model": REAL, **SMALL, **METHODS[name]}, name) for name in methods}
    evals = [e.submit({"model": REAL, **EVAL}, "parent")]
    if kv4:
        evals.append(e.submit({"model": REAL, **EVAL, "kv_cache_dtype": "int4"}, "parent-kv4"))
    for name, job in quantize.items():
        final = q.wait(job.job_id, 1200)
        assert state_name(final.state) == "SUCCEEDED", (name, final.error)
        local = tmp_path / name
        artifacts.fetch_dir(real_store, "models", name, local)
        model = AutoModelForCausalLM.from_pretrained(local, device_map={"": "cpu"})
        tok = AutoTokenizer.from_pretrained(local)
        ids = tok("The capital of France is", return_tensors="pt")
        assert model.generate(**ids, max_new_tokens=2, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 2
        del model
        evals.append(e.submit({"model": name, **EVAL}, f"eval-{name}"))
    for job in evals:
        final = e.wait(job.job_id, 1200)
        assert state_name(final.state) == "SUCCEEDED", final.error
        metrics = json.loads(real_store.get_bytes("evaluations", final.outputs["evaluation"].removeprefix(
            "s3://evaluations/") + "metrics.json"))
        assert metrics["datasets"]["ai2_arc"]["total_samples"] == 3
    table = degradation_table(real_store).set_index("model")
    assert sorted(table.index) == sorted(methods)
    for name, r in table.iterrows():
        # A trained model really degrades (a random one barely does): KL and perplexity move.
        assert r["kl_mean"] > 1e-4 and math.isfinite(r["ppl_delta"]) and r["ppl_quantized"] > 1, name
        assert r["disk_ratio"] < (0.6 if "_w4_" in name else 0.8), name  # tied embeddings stay fp32
        assert r["ai2_arc__n"] == 3 and r["eval_speed_ratio"] > 0
