"""A small smoke plan end to end: real services, real Prefect (ephemeral, isolated PREFECT_HOME),
through the `ftlab run` CLI in a subprocess; then a rerun skips every finished step."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from flows.aggregate import STUDY_COLUMNS
from services.common.storage import artifacts
from tests.conftest import TINY

pytestmark = pytest.mark.slow

PLAN = {
    "name": "tinysmoke",
    "base_models": [TINY],
    "datasets": ["arc"],
    "train": [{"peft_method": "lora", "lora": {"r": 4}, "max_steps": 2, "train_limit": 8,
               "per_device_batch_size": 4, "gradient_accumulation_steps": 1, "max_seq_length": 256}],
    "quantize": {"methods": ["bnb_int8"]},
    "evaluate": {"include_base": True, "tasks": [{"task": "ai2_arc", "limit": 4}], "batch_size": 4,
                 "max_new_tokens": 8},
}


def run_cli(args, services, tmp_path):
    env = dict(os.environ, FTLAB_STORAGE="local", FTLAB_LOCAL_ROOT=str(services["store"].root),
               PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               **{f"FTLAB_{n.upper()}_ADDR": s.address for n, s in services["running"].items()})
    return subprocess.run([sys.executable, "-m", "ftlab.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)


def test_flow_runs_every_stage_then_a_rerun_skips_everything(services, tiny_model_dir, tmp_path):
    plan = tmp_path / "tinysmoke.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    first = run_cli(["run", str(plan)], services, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "metrics_summary" in first.stdout and "Qwen3-tiny-arc_SFT_LoRa4_Int8_BnB" in first.stdout

    store = services["store"]
    reports = artifacts.list_committed(store, "reports", "tinysmoke/")
    assert len(reports) == 1
    table = pd.read_csv(io.BytesIO(store.get_bytes("reports", reports[0] + "/metrics_summary.csv")))
    assert list(table.columns[: len(STUDY_COLUMNS)]) == STUDY_COLUMNS
    assert sorted(table["model"]) == sorted([TINY, "Qwen3-tiny-arc_SFT_LoRa4_NoQuant",
                                             "Qwen3-tiny-arc_SFT_LoRa4_Int8_BnB"])
    assert table["ai2_arc__macro_f1"].notna().all()
    # both scoring profiles: the study's scorer's numbers right after the study's columns
    n, study = len(STUDY_COLUMNS), [c for c in table.columns if c.endswith("__study")]
    assert "ai2_arc__macro_f1__study" in study and list(table.columns[n:n + len(study)]) == study
    assert table["ai2_arc__macro_f1__study"].notna().all()
    trained = table.set_index("model").loc["Qwen3-tiny-arc_SFT_LoRa4_NoQuant"]
    assert trained["parent_model"] == TINY and trained["quant_tag"] == "NoQuant" and trained["rank"] == 4
    steps = json.loads(store.get_bytes("reports", reports[0] + "/steps.json"))
    assert [(s["key"], s["status"]) for s in steps][0] == ("data:arc", "skipped")  # already in storage
    assert [s["status"] for s in steps[1:]] == ["succeeded"] * 6
    # like for like: the INT8's source scored again with engine hf (bitsandbytes cannot load in vLLM),
    # kept out of the summary (3 rows above); the INT8's comparison row pairs evaluations scored alike
    (again,) = [s for s in steps if s.get("labels", {}).get("rescore")]
    assert again["output"].startswith("Qwen3-tiny-arc_SFT_LoRa4_NoQuant/tinysmoke-hf-")
    vs = pd.read_csv(io.BytesIO(store.get_bytes("reports", reports[0] + "/comparisons.csv")))
    int8 = vs[vs.model == "Qwen3-tiny-arc_SFT_LoRa4_Int8_BnB"]
    assert len(int8) and int8.like_for_like.all() and (int8.engine == int8.parent_engine).all()
    for name in ("report.md", "report.html", "run.json"):
        assert store.exists("reports", reports[0] + "/" + name)
    plots = [k for k in store.list_keys("reports", reports[0] + "/") if k.endswith(".png")]
    assert {k.rsplit("/", 1)[1] for k in plots} >= {"latency.png", "score_vs_memory.png", "rank_sweep.png",
                                                     "ptq_size.png"}
    for k in plots:
        assert store.get_bytes("reports", k)[:8] == b"\x89PNG\r\n\x1a\n"
    html = store.get_bytes("reports", reports[0] + "/report.html").decode()
    assert "<img src='rank_sweep.png'" in html and "Qwen3-tiny-arc_SFT_LoRa4_Int8_BnB" in html
    assert (tmp_path / ".ftlab" / "reports" / "tinysmoke").is_dir()  # the local copy the CLI printed

    jobs_before = {n: len(c.list_all()) for n, c in services["clients"].items()}
    second = run_cli(["run", str(plan)], services, tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    latest = sorted(artifacts.list_committed(store, "reports", "tinysmoke/"))[-1]
    steps2 = json.loads(store.get_bytes("reports", latest + "/steps.json"))
    assert [s["status"] for s in steps2] == ["skipped"] * 7
    assert {n: len(c.list_all()) for n, c in services["clients"].items()} == jobs_before  # no new job anywhere

    dry = run_cli(["run", str(plan), "--dry-run"], services, tmp_path)
    assert dry.returncode == 0 and "already done (will be skipped): 6; to run: 0" in dry.stdout, dry.stdout
    rebuilt = run_cli(["report", "tinysmoke"], services, tmp_path)  # from storage alone
    assert rebuilt.returncode == 0 and f"s3://reports/{latest}/report.html" in rebuilt.stdout, rebuilt.stderr

    # The orchestrator: a model nobody evaluated yet gets an ARC evaluation, the others none.
    from services.common.torch_utils import modeling
    modeling.commit_base_model(store, "Qwen3-tiny2-base", tiny_model_dir, {"source": "tiny-random-qwen3"})
    orch = run_cli(["evaluate-missing", "--task", "ai2_arc", "--limit", "2"], services, tmp_path)
    assert orch.returncode == 0, orch.stdout + orch.stderr
    assert [p.split("/")[0] for p in artifacts.list_committed(store, "evaluations")].count("Qwen3-tiny2-base") == 1
    assert len(services["clients"]["evaluator"].list_all()) == jobs_before["evaluator"] + 1
