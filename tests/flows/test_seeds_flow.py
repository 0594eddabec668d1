"""Seeds as replication through the real flow (issue 25): `ftlab run --seed 1 --seed 2` trains,
quantizes (post-training INT8) and evaluates the configuration once per seed under readable names
(``..._s1_NoQuant``, ``..._s1_Int8_BnB``, as the dry run prints them), the trainer, quantizer and
evaluator record the digests the planner computed, the report folds the seeds of each
configuration into one row (mean, across-seed sd, two-level CI, n seeds) and compares the fine-tune
with the base and the INT8 with its own seed's fine-tune, paired on items and seeds and like for like
(each fine-tune scored again on HF in the INT8's dtype); a rerun's dry
run counts every step done; the same plan with another learning rate is refused before anything is
submitted, naming the differing field. Real services, real Prefect (subprocess). PTQ rows paired
by seed from stored evaluations: tests/unit/test_seed_report.py."""
from __future__ import annotations

import io
import json

import pandas as pd
import pytest
import yaml

from flows.experiment import load
from services.common.storage import artifacts
from tests.conftest import TINY
from tests.flows.test_smoke_flow import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # 9 jobs and Prefect on a shared 2-core host

PLAN = {
    "name": "tinyseeds",
    "base_models": [TINY],
    "datasets": ["arc"],
    "train": [{"peft_method": "lora", "lora": {"r": 4}, "max_steps": 1, "train_limit": 4, "learning_rate": 1e-3,
               "per_device_batch_size": 2, "gradient_accumulation_steps": 1, "max_seq_length": 128, "save_steps": 0}],
    # no quality section (held-out prompts through both models: tests/integration/test_quantizer.py)
    "quantize": [{"methods": ["bnb_int8"], "options": {"report": {"num_prompts": 0}}}],
    "evaluate": {"tasks": [{"task": "ai2_arc", "limit": 4}], "batch_size": 4, "max_new_tokens": 4},
}
CONFIG = "Qwen3-tiny-arc_SFT_LoRa4_NoQuant"
QUANTIZED = "Qwen3-tiny-arc_SFT_LoRa4_Int8_BnB"  # the INT8 of each seed's fine-tune, folded


def test_two_seeds_through_the_flow(services, tmp_path):
    store = services["store"]
    path = tmp_path / "tinyseeds.yaml"
    path.write_text(yaml.safe_dump(PLAN))
    first = run_cli(["run", str(path), "--seed", "1", "--seed", "2"], services, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr

    exp = load(str(path), seeds=[1, 2])
    for step in exp.stage("train"):  # the trainer recorded the digest the planner computed
        assert step.output == f"Qwen3-tiny-arc_SFT_LoRa4_s{step.spec['seed']}_NoQuant"
        manifest = artifacts.read_manifest(store, "models", step.output)
        assert manifest["config_digest"] == step.digest and manifest["parent_digests"] == [TINY]
        assert manifest["spec"]["seed"] == step.spec["seed"]
    quantized = exp.stage("quantize")  # one INT8 per seed, named with its seed, made from that seed's model
    assert [(q.output, q.after) for q in quantized] == [
        (f"Qwen3-tiny-arc_SFT_LoRa4_s{n}_Int8_BnB", [f"Qwen3-tiny-arc_SFT_LoRa4_s{n}_NoQuant"]) for n in (1, 2)]
    for q in quantized:
        source = artifacts.read_manifest(store, "models", q.after[0])
        assert artifacts.read_manifest(store, "models", q.output)["parent_digests"] == [source["config_digest"]]
    own = [s for s in exp.stage("evaluate") if "rescore" not in s.labels]
    assert sorted(s.after[0] for s in own) == sorted(
        [TINY] + [s.output for s in exp.stage("train")] + [q.output for q in quantized])  # each one evaluated
    # like for like: each seed's fine-tune scored again on HF in the dtype its INT8 computes in (vLLM
    # cannot load bitsandbytes; on a CPU with native bf16 the default dtype would be bf16, the INT8's fp32)
    again = [s for s in exp.stage("evaluate") if "rescore" in s.labels]
    assert sorted((s.after[0], s.spec["engine"], s.spec["dtype"]) for s in again) == [
        (f"Qwen3-tiny-arc_SFT_LoRa4_s{n}_NoQuant", "hf", "compute") for n in (1, 2)]
    for step in exp.stage("evaluate"):  # each evaluation names the model it scored by its digest
        model = artifacts.read_manifest(store, "models", step.after[0])
        assert artifacts.read_manifest(store, "evaluations", step.output)["parent_digests"] == [
            model.get("config_digest") or step.after[0]]

    report = artifacts.list_committed(store, "reports", "tinyseeds/")[0]
    table = pd.read_csv(io.BytesIO(store.get_bytes("reports", report + "/metrics_summary.csv"))).set_index("model")
    assert sorted(table.index) == sorted([TINY, CONFIG, QUANTIZED])
    by_seed = pd.read_csv(io.BytesIO(store.get_bytes("reports", report + "/metrics_by_seed.csv")))
    assert len(by_seed) == 5
    for config, tag in ((CONFIG, "_NoQuant"), (QUANTIZED, "_Int8_BnB")):
        row, seeds = table.loc[config], by_seed[by_seed.model.str.endswith(tag)]
        assert sorted(seeds.model) == [config.replace(tag, f"_s{n}{tag}") for n in (1, 2)]
        assert row.n_seeds == 2 and row.seeds == "1,2", config
        assert row.ai2_arc__accuracy == pytest.approx(seeds.ai2_arc__accuracy.mean())
        assert row.ai2_arc__accuracy__sd_seeds == pytest.approx(seeds.ai2_arc__accuracy.std(ddof=1), abs=1e-3)
        assert row.ai2_arc__accuracy__ci95_low <= row.ai2_arc__accuracy <= row.ai2_arc__accuracy__ci95_high
    assert table.loc[TINY].n_seeds == 1

    vs = pd.read_csv(io.BytesIO(store.get_bytes("reports", report + "/comparisons.csv")))
    assert set(zip(vs.model, vs.vs, vs.relation)) == {(CONFIG, TINY, "fine-tune vs base"),
                                                       (QUANTIZED, CONFIG, "PTQ vs source")}
    assert (vs.n_seeds == 2).all() and vs.engine.notna().all()
    assert vs[vs.model == CONFIG].like_for_like.all()
    # each seed's INT8 paired with its source's HF evaluation in the INT8's dtype: the quantization's cost alone
    ptq = vs[vs.model == QUANTIZED]
    assert len(ptq) and ptq.like_for_like.all() and (ptq.engine == ptq.parent_engine).all(), ptq.to_dict("records")
    for s in again:  # what the evaluator ran matches what its INT8 recorded
        int8 = s.after[0].replace("_NoQuant", "_Int8_BnB")
        (int8_eval,) = [e.output for e in own if e.after[0] == int8]
        recorded = [json.loads(store.get_bytes("evaluations", o + "/metrics.json"))["hardware"]["dtype"]
                    for o in (s.output, int8_eval)]
        assert recorded[0] == recorded[1], recorded
    md = store.get_bytes("reports", report + "/report.md").decode()
    assert "within seed noise" in md and "n_seeds" in md

    dry = run_cli(["run", str(path), "--seed", "1", "--seed", "2", "--dry-run"], services, tmp_path)
    assert dry.returncode == 0 and "already done (will be skipped): 11; to run: 0" in dry.stdout, dry.stdout
    assert all(f"Qwen3-tiny-arc_SFT_LoRa4_s{n}_Int8_BnB" in dry.stdout for n in (1, 2))

    jobs_before = {n: len(c.list_all()) for n, c in services["clients"].items()}
    changed = tmp_path / "changed.yaml"  # the same names, another learning rate: refused, nothing submitted
    changed.write_text(yaml.safe_dump({**PLAN, "train": [{**PLAN["train"][0], "learning_rate": 5e-4}]}))
    refused = run_cli(["run", str(changed), "--seed", "1", "--seed", "2"], services, tmp_path)
    assert refused.returncode != 0
    assert (f"models/Qwen3-tiny-arc_SFT_LoRa4_s1_NoQuant exists but was made by another configuration: "
            "learning_rate (planned 0.0005, stored 0.001)") in refused.stdout + refused.stderr
    assert {n: len(c.list_all()) for n, c in services["clients"].items()} == jobs_before
    assert json.loads(json.dumps(artifacts.list_committed(store, "reports", "tinyseeds/"))) == [report]
