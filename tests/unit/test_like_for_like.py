"""Like-for-like comparisons (issue 25): where a model will be scored on HF because vLLM cannot load
it (bitsandbytes, adapters on a quantized base) and a model it is compared with would be scored on
vLLM, the planner adds one HF evaluation of that model (once, however many children ask), and the
comparisons, the verdicts and the report pair the child with it. Planner, storage as the services
commit it (LocalStore), the report built from it."""
from __future__ import annotations

import pandas as pd
import pytest

from flows import identity
from flows import report_verdicts as V
from flows.comparisons import between_configurations, lead_table, vs_parent_table
from flows.dryrun import render
from flows.experiment import load, plan, predicted_scoring
from flows.report import RunInfo, build_report
from flows.report_ptq import degradation_table
from tests.unit.test_seed_report import _evaluation, _model, _right


def _again(exp):
    return [s for s in exp.stage("evaluate") if "rescore" in s.labels]


def _own(exp, model):
    return next(s for s in exp.stage("evaluate") if s.spec["model"] == model and "rescore" not in s.labels
                and s.labels.get("split") != "validation")


def test_demo_scores_the_int8s_source_again_under_hf():
    exp = load("demo")
    (again,) = _again(exp)
    lora, int8 = "SmolLM2-135M-Instruct-arc_SFT_LoRa8_NoQuant", "SmolLM2-135M-Instruct-arc_SFT_LoRa8_Int8_BnB"
    assert again.spec["model"] == lora and again.labels["rescore"] == {"engine": "hf", "dtype": "compute", "for": [int8]}
    own = _own(exp, lora)
    # the same tasks, items and generation settings; only the engine and dtype differ, and so the eval id:
    # the INT8 computes in the device's compute dtype (fp32 on CPU), so its source is scored in that one too
    # (the evaluator's default on a CPU with native bf16 is bf16: the INT8 row would pair fp32 with bf16)
    assert {k: v for k, v in again.spec.items() if k not in ("engine", "dtype", "eval_id")} == \
        {k: v for k, v in own.spec.items() if k != "eval_id"}
    assert "engine" not in own.spec and "dtype" not in own.spec
    assert again.spec["engine"] == "hf" and again.spec["dtype"] == "compute"
    assert again.spec["eval_id"] != own.spec["eval_id"] and again.spec["eval_id"].startswith("demo-hf-")
    assert again.after == [lora]


def test_mini_study_rescores_each_bnb_source_once_and_gptq_awq_none():
    assert not _again(load("mini-study"))  # as shipped: GPTQ and AWQ only, both vLLM's
    import yaml
    from flows.experiment import EXPERIMENTS_DIR
    raw = yaml.safe_load((EXPERIMENTS_DIR / "mini-study.yaml").read_text())
    raw["quantize"] = [{"methods": ["bnb_int8", "bnb_4bit", "gptq", "awq"], "where": {"peft_method": "none"}}]
    exp = plan(raw)  # the GPU host's variant its comment names
    quantized = {s.output: s.spec["method"] for s in exp.stage("quantize")}
    assert set(quantized.values()) == {"bnb_int8", "bnb_4bit", "gptq", "awq"}
    sources = {s.spec["source_model"] for s in exp.stage("quantize")}
    again = _again(exp)
    # every full fine-tune candidate (2 rates x 3 seeds) once, for both its bitsandbytes PTQs
    assert sorted(s.spec["model"] for s in again) == sorted(sources) and len(again) == 6
    for s in again:
        assert sorted(quantized[c] for c in s.labels["rescore"]["for"]) == ["bnb_4bit", "bnb_int8"]
        assert s.spec["tasks"] == _own(exp, s.spec["model"]).spec["tasks"]
        # it waits for the learning-rate choice like the candidate's own test evaluation: only the chosen runs
        assert s.after == _own(exp, s.spec["model"]).after and s.labels["candidate"]
    # GPTQ and AWQ load in vLLM: their sources need nothing more, nor do the bases of unquantized LoRAs
    assert [predicted_scoring(s)[:2] for s in exp.stage("quantize")
            if s.spec["method"] in ("gptq", "awq")] == [("vllm", "auto")] * 12
    assert {predicted_scoring(s)[:2] for s in exp.stage("quantize") if s.spec["method"].startswith("bnb")} == {
        ("hf", "compute")}
    assert {s.spec["dtype"] for s in again} == {"compute"}
    assert not any("LoRa" in s.spec["model"] or s.spec["model"] == "SmolLM2-135M-Instruct" for s in again)


def test_an_adapter_on_a_quantized_base_gets_its_base_and_rivals_scored_again():
    exp = plan({"name": "t", "base_models": ["Qwen3-tiny-base"], "datasets": ["arc"],
                "train": [{"peft_method": "lora", "lora": {"r": 4}}, {"peft_method": "vera", "lora": {"r": 8}},
                          {"peft_method": "lora", "lora": {"r": 4}, "training_quant": "qlora"}],
                "evaluate": {"tasks": [{"task": "ai2_arc", "limit": 2}]}})
    qlora = next(s for s in exp.stage("train") if s.labels["training_quant"] == "qlora")
    assert predicted_scoring(qlora) == ("hf", "bfloat16", "an adapter on a qlora-quantized base")  # NF4, bf16 compute
    assert [(s.spec["model"], s.labels["rescore"]["for"]) for s in _again(exp)] == [
        ("Qwen3-tiny-base", [qlora.output]), ("Qwen3-tiny-arc_SFT_LoRa4_NoQuant", [qlora.output]),
        ("Qwen3-tiny-arc_SFT_VeRa8_NoQuant", [qlora.output])]
    assert {s.spec["dtype"] for s in _again(exp)} == {"bfloat16"}  # what the NF4 base computes in, on any device
    # nothing to add where every model loads in vLLM
    assert not _again(plan({"name": "t", "base_models": ["Qwen3-tiny-base"], "datasets": ["arc"],
                            "train": [{"peft_method": "lora", "lora": {"r": 4}}],
                            "quantize": {"methods": ["gptq"]}, "evaluate": {"tasks": [{"task": "ai2_arc"}]}}))


def test_the_hf_evaluation_is_its_own_step_done_only_when_it_is_stored(store, tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_DEVICE", "cpu")
    exp = load("demo")
    (again,) = _again(exp)
    own = _own(exp, again.spec["model"])
    text = render(exp, None, "nowhere")
    assert again.output in text and "like for like: again under hf in dtype compute, for SmolLM2-135M-Instruct-arc_SFT_LoRa8_Int8_BnB" in text
    assert "6 evaluate" in text and "of which like for like: 1 evaluation(s)" in text
    _model(store, tmp_path, again.spec["model"], {"kind": "trained", "spec": {}, "parents": ["SmolLM2-135M-Instruct"]})
    _evaluation(store, tmp_path, own.spec["model"], _right(10), eval_id=own.spec["eval_id"])
    # the model's own evaluation done does not make the HF one done: its own eval id, its own step
    assert identity.step_status(store, own) == ("done", "") and identity.step_status(store, again) == ("todo", "")
    _evaluation(store, tmp_path, again.spec["model"], _right(10), eval_id=again.spec["eval_id"])
    assert identity.step_status(store, again) == ("done", "")  # a rerun skips it
    assert again.request_id("demo") != own.request_id("demo")


@pytest.fixture
def quantized(store, tmp_path):
    """A fine-tune scored on vLLM bf16 (its own evaluation) and on HF fp32 (the run's like-for-like
    one), its INT8 on HF fp32."""
    _model(store, tmp_path, "B", {"kind": "base"})
    _model(store, tmp_path, "F", {"kind": "trained", "base_model": "B", "parents": ["B"]})
    _model(store, tmp_path, "F_Int8_BnB", {"kind": "quantized", "parents": ["F"]})
    _evaluation(store, tmp_path, "B", _right(10), engine="vllm", dtype="bfloat16")
    _evaluation(store, tmp_path, "F", _right(36), engine="vllm", dtype="bfloat16")
    _evaluation(store, tmp_path, "F", _right(30), eval_id="run-hf")
    _evaluation(store, tmp_path, "F_Int8_BnB", _right(29))
    return store


def test_comparisons_prefer_the_runs_evaluation_under_the_same_engine(quantized, tmp_path):
    store = quantized
    _evaluation(store, tmp_path, "F", _right(12), eval_id="a-old-hf")  # HF fp32 too, sorts first; not this run's
    run = [("B", "e1"), ("F", "e1"), ("F_Int8_BnB", "e1"), ("F", "run-hf")]  # the like-for-like one last
    vs = vs_parent_table(store, run, n_resamples=500).set_index(["model", "metric"])
    ptq = vs.loc[("F_Int8_BnB", "accuracy")]
    assert ptq.like_for_like and ptq.engine == ptq.parent_engine == "hf float32"
    assert ptq.parent_value == 75.0 and ptq["diff"] == pytest.approx(-2.5)  # 30 -> 29 of 40: the PTQ's cost alone
    assert "scored again under hf float32 for this comparison (F/run-hf)" in ptq.note
    shown = lead_table(vs.reset_index()).set_index(["model", "metric"]).loc[("F_Int8_BnB", "accuracy")]
    assert shown["scored with"] == "hf float32 (re-scored to match)" and shown["clear?"] != "not like for like"
    ft = vs.loc[("F", "accuracy")]  # the fine-tune against its base: its own (vLLM) evaluation, as before
    assert ft.like_for_like and ft.engine == "vllm bfloat16" and ft.value == 90.0 and ft.note == ""
    # without the run's own, another stored one scored alike is used, and the note says where it is from
    row = vs_parent_table(store, run[:3], n_resamples=200).set_index(["model", "metric"]).loc[("F_Int8_BnB", "accuracy")]
    assert row.like_for_like and row.parent_value == 30.0 and "F/a-old-hf, stored outside this run" in row.note


def test_without_any_evaluation_scored_alike_the_row_is_marked_and_says_so(store, tmp_path):
    _model(store, tmp_path, "F", {"kind": "base"})
    _model(store, tmp_path, "F_Int8_BnB", {"kind": "quantized", "parents": ["F"]})
    _evaluation(store, tmp_path, "F", _right(36), engine="vllm", dtype="bfloat16")
    _evaluation(store, tmp_path, "F_Int8_BnB", _right(29))
    row = vs_parent_table(store, [("F", "e1"), ("F_Int8_BnB", "e1")], n_resamples=200).query("metric == 'accuracy'").iloc[0]
    assert not row.like_for_like and not row.clear and row.parent_engine == "vllm bfloat16"
    assert "no evaluation of it scored like the child is in this run or in storage" in row.note


def test_configurations_and_verdicts_pair_under_one_engine(store, tmp_path):
    """A QLoRA (HF only) against a LoRA scored on vLLM and, in the run, again on HF: the pair and the
    verdict use the LoRA's HF evaluation; without it the verdict is not decided."""
    _model(store, tmp_path, "B", {"kind": "base"})
    _evaluation(store, tmp_path, "B", _right(10))
    lora, qlora = "B-arc_SFT_LoRa8_NoQuant", "B-arc_SFT_LoRa8_QLORA_w4_headbf16"
    for name in (lora, qlora):
        _model(store, tmp_path, name, {"kind": "trained", "base_model": "B", "parents": ["B"]})
    _evaluation(store, tmp_path, lora, _right(38), engine="vllm", dtype="bfloat16")
    _evaluation(store, tmp_path, lora, _right(34), eval_id="run-hf")
    _evaluation(store, tmp_path, qlora, _right(30))
    run = [("B", "e1"), (lora, "e1"), (qlora, "e1"), (lora, "run-hf")]
    t = between_configurations(store, run, n_resamples=500).query("metric == 'accuracy'").iloc[0]
    assert (t.model, t.vs) == (qlora, lora) and t.like_for_like and t["diff"] == pytest.approx(-10.0)
    assert f"scored again under hf float32 for this comparison: {lora}/run-hf" in t.note
    pair = V.compare_pair(store, run, "ai2_arc", "accuracy", n_resamples=500)
    d, lo, hi = pair(lora, qlora)
    assert d == pytest.approx(-10.0) and lo < 0
    # not listed in the run, the stored HF evaluation is still found; a rival with none is not decided
    assert V.compare_pair(store, run[:3], "ai2_arc", "accuracy", n_resamples=200)(lora, qlora)[0] == pytest.approx(-10.0)
    dora = "B-arc_SFT_DoRa8_NoQuant"
    _model(store, tmp_path, dora, {"kind": "trained", "base_model": "B", "parents": ["B"]})
    _evaluation(store, tmp_path, dora, _right(38), engine="vllm", dtype="bfloat16")
    cross = V.compare_pair(store, run + [(dora, "e1")], "ai2_arc", "accuracy", n_resamples=200)(dora, qlora)
    assert isinstance(cross, str) and cross.startswith("NOT like for like") and "no evaluations of both" in cross


def test_the_report_keeps_the_hf_evaluation_out_of_the_summary(quantized, tmp_path):
    store = quantized
    steps = [{"key": f"evaluate:{m}/{e}", "stage": "evaluate", "output": f"{m}/{e}", "status": "succeeded",
              "labels": {"model": m}} for m, e in (("B", "e1"), ("F", "e1"), ("F_Int8_BnB", "e1"))]
    steps.append({"key": "evaluate:F/run-hf", "stage": "evaluate", "output": "F/run-hf", "status": "succeeded",
                  "labels": {"model": "F", "rescore": {"engine": "hf", "dtype": "compute", "for": ["F_Int8_BnB"]}}})
    out = build_report(store, RunInfo("p", "r1"), steps, tmp_path / "rep")
    table = pd.read_csv(tmp_path / "rep" / "metrics_summary.csv")
    assert sorted(table.model) == ["B", "F", "F_Int8_BnB"]  # one row each: F's own (vLLM) evaluation
    assert table.set_index("model").loc["F", "eval_id"] == "e1"
    ptq = next(r for r in out["comparisons"] if r["model"] == "F_Int8_BnB" and r["metric"] == "accuracy")
    assert ptq["like_for_like"] and ptq["parent_value"] == 75.0
    assert "not like for like" not in (tmp_path / "rep" / "report.md").read_text()
    # the PTQ degradation table compares the INT8 with its source's HF evaluation too: the cost is the quantization's
    deg = degradation_table(store, ["F_Int8_BnB"]).set_index("model").loc["F_Int8_BnB"]
    assert deg.like_for_like and deg.ai2_arc__diff == pytest.approx(-2.5)
