"""Every shipped experiment YAML loads and plans; matrices, include/exclude and quantization
sources expand as written; bad specs report every problem at once."""
from __future__ import annotations

import csv
from collections import Counter

import pytest

from flows.experiment import EXPERIMENTS_DIR, expand, load, matches, plan
from services.common.contract.errors import ValidationError
from tests.conftest import SHARED

SHIPPED = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
EVAL = {"tasks": [{"task": "ai2_arc", "limit": 4}]}


def spec(**kw):
    return {"name": "t", "base_models": ["Qwen3-tiny-base"], "datasets": ["arc"], "evaluate": EVAL, **kw}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_experiments_plan(name):
    exp = load(name)
    assert exp.steps and exp.name == name
    assert len({s.key for s in exp.steps}) == len(exp.steps)  # no step twice
    outputs = {s.output for s in exp.steps}
    for s in exp.steps:  # every dependency is an input model or produced by an earlier step
        for dep in s.after:
            assert dep in exp.inputs or dep in outputs
    assert set(exp.inputs) <= set(exp.raw["base_models"]) | set(exp.raw["evaluate"].get("models", []))


def test_phase_plans_have_the_studys_shape():
    counts = {n: Counter(s.stage for s in load(n).steps) for n in ("phase1", "phase2")}
    # 2 sizes x 3 datasets x (6 ranks + full FT) trained; each evaluated, plus the 2 bases
    assert counts["phase1"] == {"train": 42, "evaluate": 44}
    # 3 datasets x (LoRA256, DoRA256, VeRA512, VeRA1024), plus the base
    assert counts["phase2"] == {"train": 12, "evaluate": 13}
    p1 = {s.output for s in load("phase1").stage("train")}
    assert {"Qwen3-0.6B-arc_SFT_LoRa32_NoQuant", "Qwen3-1.7B-openmath_SFT_LoRa1024_NoQuant",
            "Qwen3-1.7B-squad_SFT_NoPeft_NoQuant"} <= p1


def test_phase3_contains_the_studys_twelve_models():
    with open(SHARED / "seed" / "metrics_summary.csv") as fh:
        study = [row["model"] for row in csv.DictReader(fh)]
    assert len(study) == 12
    evaluated = {s.spec["model"] for s in load("phase3").stage("evaluate")}
    assert set(study) <= evaluated, set(study) - evaluated


def test_smoke_plan_matches_the_study_naming():
    exp = load("smoke")
    trained = {s.output for s in exp.stage("train")}
    assert "Qwen3-tiny-arc_SFT_LoRa8_NoQuant" in trained
    assert "Qwen3-tiny-arc_SFT_LoRa8_Int8_BnB" in {s.output for s in exp.stage("quantize")}
    own = [s for s in exp.stage("evaluate") if "rescore" not in s.labels]
    assert len(own) == len(exp.stage("train")) + len(exp.stage("quantize")) + 1
    # like for like (HF): the QLoRA's base and the other 5 fine-tunes it is set against, in bf16 (what the
    # NF4 base computes in); the base again for its 4-bit PTQ and LoRA r8 again for its INT8, in the
    # device's compute dtype (bitsandbytes': fp32 on CPU)
    again = sorted((s.spec["model"], s.spec["dtype"]) for s in exp.stage("evaluate") if "rescore" in s.labels)
    assert len(again) == 8 and {d for _, d in again} == {"bfloat16", "compute"}
    assert [m for m, d in again if d == "compute"] == ["Qwen3-tiny-arc_SFT_LoRa8_NoQuant", "Qwen3-tiny-base"]


def test_request_ids_are_stable_across_loads():
    a, b = load("smoke"), load("smoke")
    assert [s.request_id("smoke") for s in a.steps] == [s.request_id("smoke") for s in b.steps]
    assert all(s.request_id("smoke").startswith("smoke:") for s in a.steps)


def test_matrix_expands_lists_but_not_repeated_fields():
    combos = expand({"peft_method": ["lora", "dora"], "lora": {"r": [4, 8, 16], "target_modules": ["q_proj", "v_proj"]}})
    assert len(combos) == 6
    assert all(c["lora"]["target_modules"] == ["q_proj", "v_proj"] for c in combos)
    assert len(expand({"lora": {"target_modules": [["q_proj"], ["all-linear"]]}})) == 2  # a list of lists is an axis


def test_rules_match_dotted_fields_and_value_lists():
    job = {"peft_method": "lora", "lora": {"r": 64}, "dataset": "arc"}
    assert matches({"lora.r": [32, 64]}, job) and matches({"peft_method": "lora", "dataset": "arc"}, job)
    assert not matches({"lora.r": 128}, job) and not matches({"training_quant": "qlora"}, job)


def test_defaults_matrix_include_exclude_and_restrictions():
    exp = plan(spec(base_models=["Qwen3-tiny-base", "Qwen3-other-base"], datasets=["arc", "squad"],
                    defaults={"max_steps": 2, "lora": {"dropout": 0.0}},
                    train=[{"peft_method": "lora", "lora": {"r": [4, 8]}},
                           {"peft_method": "vera", "lora": {"r": 2}, "base_models": ["Qwen3-other-base"],
                            "datasets": ["arc"]}],
                    exclude=[{"dataset": "squad", "lora.r": 8}]))
    names = [s.output for s in exp.stage("train")]
    assert names == ["Qwen3-tiny-arc_SFT_LoRa4_NoQuant", "Qwen3-tiny-squad_SFT_LoRa4_NoQuant",
                     "Qwen3-other-arc_SFT_LoRa4_NoQuant", "Qwen3-other-squad_SFT_LoRa4_NoQuant",
                     "Qwen3-tiny-arc_SFT_LoRa8_NoQuant", "Qwen3-other-arc_SFT_LoRa8_NoQuant",
                     "Qwen3-other-arc_SFT_VeRa2_NoQuant"]
    # the plan checks each configuration as the trainer's door will: an adapter default under a
    # full fine-tune is refused here, not after the other steps ran
    with pytest.raises(ValidationError, match=r"train\[1\]\.lora: adapter settings given but peft_method is 'none'"):
        plan(spec(defaults={"lora": {"dropout": 0.0}}, train=[{"lora": {"r": 4}}, {"peft_method": "none"}]))
    first = exp.stage("train")[0].spec
    assert first["max_steps"] == 2 and first["lora"] == {"dropout": 0.0, "r": 4}  # defaults deep-merged
    assert exp.datasets == ["arc", "squad"]
    only = plan(spec(train=[{"lora": {"r": [4, 8, 16]}}], include=[{"lora.r": [4, 16]}]))
    assert [s.labels["rank"] for s in only.stage("train")] == [4, 16]


def test_quantize_chosen_outputs_and_bases():
    exp = plan(spec(base_models=["Qwen3-a-base", "Qwen3-b-base"],
                    train=[{"peft_method": "lora", "lora": {"r": 4}}],
                    quantize=[{"methods": ["bnb_int8"], "sources": ["base", "trained"],
                               "where": {"base_model": "Qwen3-a-base"}}],
                    evaluate={**EVAL, "models": ["Qwen3-ref-base"]}))
    assert [s.output for s in exp.stage("quantize")] == ["Qwen3-a-arc_SFT_LoRa4_Int8_BnB", "Qwen3-a-base_Int8_BnB"]
    evaluated = [s.spec["model"] for s in exp.stage("evaluate") if "rescore" not in s.labels]
    assert evaluated[:3] == ["Qwen3-a-base", "Qwen3-b-base", "Qwen3-ref-base"] and len(evaluated) == 7
    # the INT8s' sources scored again under HF, like the INT8s (vLLM cannot load bitsandbytes)
    again = [s for s in exp.stage("evaluate") if "rescore" in s.labels]
    assert [(s.spec["model"], s.spec["engine"], s.spec["dtype"], s.labels["rescore"]["for"]) for s in again] == [
        ("Qwen3-a-arc_SFT_LoRa4_NoQuant", "hf", "compute", ["Qwen3-a-arc_SFT_LoRa4_Int8_BnB"]),
        ("Qwen3-a-base", "hf", "compute", ["Qwen3-a-base_Int8_BnB"])]
    assert exp.inputs == ["Qwen3-a-base", "Qwen3-b-base", "Qwen3-ref-base"]


def test_bad_experiment_reports_everything():
    with pytest.raises(ValidationError) as exc:
        plan({"name": "bad name", "base_models": [], "datasets": ["../x"], "train": [{"base_model": "x"}],
              "quantize": {"methods": ["awq9"]}, "evaluate": {}, "colour": "blue"})
    text = str(exc.value)
    for fragment in ["unknown key 'colour'", "name:", "base_models: at least one", "datasets[0]",
                     "train[0]", "awq9", "evaluate.tasks"]:
        assert fragment in text, fragment


def test_bad_fields_inside_configurations_are_named():
    with pytest.raises(ValidationError) as exc:
        plan(spec(train=[{"peft_method": ["lora", "loha"], "lora": {"r": 4}, "learning_rate": "fast"},
                         {"training_quant": "int3", "colour": 1},
                         {"base_models": ["Qwen3-missing-base"]}],
                  quantize=[{"methods": ["bnb_int8"], "sources": ["adapter"], "flavour": 1}],
                  evaluate={"tasks": [{"task": "hellaswag"}], "batch": 3}, timeouts_s={"train": -1, "deploy": 3},
                  data={"source": "ftp"}))
    text = "\n".join(exc.value.problems)
    for fragment in ["'loha'", "learning_rate", "'int3'", "colour", "train[2].base_models",
                     "quantize[0].sources: unknown 'adapter'", "unknown key 'flavour'", "hellaswag",
                     "evaluate: unknown key 'batch'", "timeouts_s.train", "unknown stage 'deploy'", "data.source"]:
        assert fragment in text, fragment



def test_out_of_range_values_are_refused_at_load():
    # lora.r -1 planned "Qwen3-tiny-arc_SFT_LoRa-1_NoQuant" and limit -3 an evaluation; both fail only at the door
    with pytest.raises(ValidationError) as exc:
        plan(spec(train=[{"peft_method": ["lora", "vera"], "lora": {"r": -1, "dropout": 2.0}}],
                  evaluate={"tasks": ["ai2_arc", {"task": "squad_v2", "limit": 0}], "limit": -3, "batch_size": 0,
                            "max_new_tokens": -1}))
    text = "\n".join(exc.value.problems)
    for fragment in ["train[0].lora.r: -1 must be in [1, 4096]", "train[0].lora.dropout: 2.0",
                     "evaluate.tasks[0].limit: -3", "evaluate.tasks[1].limit: 0", "evaluate.batch_size: 0",
                     "evaluate.max_new_tokens: -1"]:
        assert fragment in text, fragment

def test_a_method_on_a_base_it_cannot_train_is_refused_at_load():
    # PiSSA's SVD needs the base's float weights: `ftlab run --dry-run` planned it and the trainer failed
    with pytest.raises(ValidationError) as exc:
        plan(spec(train=[{"peft_method": "pissa", "training_quant": ["none", "qlora", "int8"], "lora": {"r": 4}}]))
    text = "\n".join(exc.value.problems)
    assert text.count("peft_method 'pissa' with training_quant") == 2, text
    assert "'qlora'" in text and "'int8'" in text


def test_two_configurations_with_the_same_name_are_refused():
    with pytest.raises(ValidationError, match="same step"):  # identical configurations: one step twice
        plan(spec(train=[{"lora": {"r": 4}}, {"lora": {"r": 4}}]))
    with pytest.raises(ValidationError) as exc:  # not a sweep field: refused, with the fields they differ in
        plan(spec(train=[{"lora": {"r": 4}, "warmup_ratio": [0.0, 0.1]}]))
    assert ("two configurations are both named 'Qwen3-tiny-arc_SFT_LoRa4_NoQuant' but differ in warmup_ratio "
            "(one 0.0, other 0.1)") in exc.value.problems[0]
    exp = plan(spec(train=[{"lora": {"r": 4}, "learning_rate": 0.001},
                           {"lora": {"r": 4}, "learning_rate": 0.002, "output_name": "{name}-lr2e-3"}]))
    assert [s.output for s in exp.stage("train")] == ["Qwen3-tiny-arc_SFT_LoRa4_NoQuant",
                                                      "Qwen3-tiny-arc_SFT_LoRa4_NoQuant-lr2e-3"]


def test_unknown_experiment_lists_shipped():
    with pytest.raises(ValidationError, match="smoke"):  # bad input: `ftlab run phase9` exits 2
        load("phase9")


def test_a_spec_without_evaluate_section_only_trains():
    exp = plan({"name": "t", "base_models": ["Qwen3-tiny-base"], "datasets": ["arc"], "train": [{"lora": {"r": 4}}]})
    assert [s.stage for s in exp.steps] == ["train"]


def test_ptq_options_are_checked_as_the_quantizer_checks_them():
    # an unknown algorithm crashed the plan (KeyError naming the step); bad options planned a name
    with pytest.raises(ValidationError) as exc:
        plan(spec(train=[{"lora": {"r": 4}}],
                  quantize=[{"methods": ["w4a16"], "options": {"algorithm": "foo", "group_size": 0}},
                            {"methods": ["bnb_int8"], "options": {"group_size": 64}},
                            {"methods": ["gptq"], "sources": ["base"],
                             "options": {"weights_bits": 3, "calibration": {"num_samples": 0}}}]))
    text = "\n".join(exc.value.problems)
    for fragment in ["quantize[0].algorithm: unknown 'foo'", "quantize[0].group_size: 0",
                     "quantize[1].group_size: does not apply to method bnb_int8",
                     "quantize[2].weights_bits: 3 is not supported by gptq",
                     "quantize[2].calibration.num_samples: 0"]:
        assert fragment in text, fragment


def test_unknown_keys_are_named_as_written_and_ptq_options_checked_without_sources():
    # json_format's text listed camelCase fields ("baseModel"); PTQ options were checked only for
    # steps that had a source, so a file whose training failed hid them; YAML's .nan was a ParseError
    with pytest.raises(ValidationError) as exc:
        plan(spec(train=[{"trainng_quant": "qlora"}, {"lora": {"rr": 4}}, {"learning_rate": float("nan")}],
                  quantize=[{"methods": ["gptq"], "options": {"calibration": {"nums": 2}}},
                            {"methods": ["bnb_int8"], "options": {"llm_int8_threshold": float("nan")}}]))
    text = "\n".join(exc.value.problems)
    for fragment in ["train[0].trainng_quant: unknown key (known: base_model, dataset,",
                     "train[1].lora.rr: unknown field (known: alpha, d_initial,",
                     "train[2].learning_rate: 'NaN' must be in (0, 1]",
                     "quantize[0].calibration.nums: unknown key (known in calibration: split, num_samples",
                     "quantize[1].llm_int8_threshold: 'NaN' must be in"]:
        assert fragment in text, fragment
    assert "baseModel" not in text
