"""Identity by configuration (issue 25): digests, sweep suffixes, refusals, "done" means the same
configuration. Planner and storage only (LocalStore, manifests as the services commit them)."""
from __future__ import annotations

import pytest

from flows import identity
from flows.dryrun import plan_rows
from flows.experiment import load, plan
from services.common.contract.errors import ValidationError
from services.common.contract.identity import config_digest, differences
from services.common.contract.naming import split_variant, variant_suffix, with_variant
from services.common.storage import artifacts

EVAL = {"tasks": [{"task": "ai2_arc", "limit": 2}]}


def spec(**kw):
    return {"name": "t", "base_models": ["Qwen3-tiny-base"], "datasets": ["arc"], "evaluate": EVAL, **kw}


def test_suffixes_read_back():
    assert variant_suffix({"seed": 2, "learning_rate": 2e-4}) == "_lr2e-4_s2"
    name = with_variant("B-arc_SFT_LoRa8_NoQuant", {"seed": 3, "learning_rate": 1e-3}, "NoQuant")
    assert name == "B-arc_SFT_LoRa8_lr1e-3_s3_NoQuant"
    assert split_variant(name) == ("B-arc_SFT_LoRa8_NoQuant", {"learning_rate": 1e-3, "seed": 3})
    assert split_variant("B-arc_SFT_LoRa8_s3_Int8_BnB") == ("B-arc_SFT_LoRa8_Int8_BnB", {"seed": 3})
    assert split_variant("B-arc_SFT_LoRa8_bf16_QLORA_w4_headbf16") == ("B-arc_SFT_LoRa8_bf16_QLORA_w4_headbf16", {})
    assert split_variant("Qwen3-4B-base_GPTQ_w4_g64_headfp16")[1] == {}


def test_digest_covers_config_and_parents_not_names():
    a = config_digest("train", {"seed": 1, "output_name": "x", "save_steps": 5}, ["B"])
    assert a == config_digest("train", {"seed": 1, "output_name": "y", "save_steps": 50}, ["B"])
    assert a != config_digest("train", {"seed": 2, "output_name": "x"}, ["B"])
    assert a != config_digest("train", {"seed": 1}, ["C"])
    assert differences({"lora": {"r": 8}, "seed": 1}, {"lora": {"r": 16}, "seed": 1}) == [("lora.r", 8, 16)]


def test_seeds_replicate_every_configuration_with_readable_names():
    exp = plan(spec(seeds=[1, 2, 3], train=[{"lora": {"r": 4}}], quantize={"methods": ["bnb_int8"]}))
    train = exp.stage("train")
    assert [s.output for s in train] == [f"Qwen3-tiny-arc_SFT_LoRa4_s{i}_NoQuant" for i in (1, 2, 3)]
    assert [s.spec["seed"] for s in train] == [1, 2, 3] and [s.labels["seed"] for s in train] == [1, 2, 3]
    assert len({s.digest for s in train}) == 3
    assert [s.output for s in exp.stage("quantize")] == [f"Qwen3-tiny-arc_SFT_LoRa4_s{i}_Int8_BnB" for i in (1, 2, 3)]
    # the base once, each seed's models once, and each seed's LoRA again under HF (like its INT8)
    assert len(exp.stage("evaluate")) == 1 + 3 + 3 + 3
    assert load("smoke", seeds=[5, 6]).stage("train")[0].output.endswith("_s5_NoQuant")


def test_seeds_are_checked_at_the_door():
    with pytest.raises(ValidationError) as exc:
        plan(spec(seeds=[1, 1, "x"], train=[{"lora": {"r": 4}, "seed": 3}]))
    text = "\n".join(exc.value.problems)
    assert "seeds: [1, 1, 'x'] must be a non-empty list of integers" in text
    with pytest.raises(ValidationError) as exc:
        plan(spec(seeds=[1, 2], train=[{"lora": {"r": 4}, "seed": 3}]))
    assert "train[0].seed: set here and by seeds: [1, 2]" in exc.value.problems[0]


def test_a_sweep_gets_suffixes_the_study_name_stays_for_one_configuration():
    exp = plan(spec(train=[{"lora": {"r": 4}, "learning_rate": [1e-3, 2e-4], "seed": [0, 1]}]))
    assert [s.output for s in exp.stage("train")] == [
        "Qwen3-tiny-arc_SFT_LoRa4_lr1e-3_s0_NoQuant", "Qwen3-tiny-arc_SFT_LoRa4_lr1e-3_s1_NoQuant",
        "Qwen3-tiny-arc_SFT_LoRa4_lr2e-4_s0_NoQuant", "Qwen3-tiny-arc_SFT_LoRa4_lr2e-4_s1_NoQuant"]
    only = plan(spec(train=[{"lora": {"r": 4}, "learning_rate": 1e-3}]))
    assert only.stage("train")[0].output == "Qwen3-tiny-arc_SFT_LoRa4_NoQuant"


def _commit(store, tmp_path, bucket, prefix, manifest):
    d = tmp_path / f"{prefix.replace('/', '_')}-{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    (d / "x.txt").write_text("x")
    artifacts.commit_dir(store, bucket, prefix, d, manifest)


def test_done_means_the_same_configuration(store, tmp_path):
    exp = plan(spec(train=[{"lora": {"r": 4}, "learning_rate": 1e-3}]))
    step = exp.stage("train")[0]
    # a hand-trained model under the same name with another learning rate and seed
    other = {**step.identity, "learning_rate": 2e-4, "seed": 7}
    _commit(store, tmp_path, "models", step.output, {"kind": "trained", "spec": other, "parents": ["Qwen3-tiny-base"],
                                                     "config_digest": config_digest("train", other, ["Qwen3-tiny-base"])})
    status, why = identity.step_status(store, step)
    assert status == "conflict" and why == "learning_rate (planned 0.001, stored 0.0002), seed (planned 42, stored 7)"
    ev = next(s for s in exp.stage("evaluate") if s.after == [step.output])
    made = artifacts.read_manifest(store, "models", step.output)  # its evaluation, made from the conflicting model
    _commit(store, tmp_path, "evaluations", ev.output, {"kind": "evaluation", "parent_digests": [made["config_digest"]]})
    rows = {r["output"]: r for r in plan_rows(exp, store)}
    assert rows[step.output]["status"] == "conflict"
    assert rows[ev.output]["status"] == "blocked", rows[ev.output]  # never "done" on a conflict's model
    store.delete("evaluations", f"{ev.output}/manifest.json")
    with pytest.raises(ValidationError) as exc:
        identity.refuse_conflicts(store, exp)
    assert "learning_rate (planned 0.001, stored 0.0002)" in exc.value.problems[0]
    # the same configuration (an older manifest without a digest: computed from its spec) is done
    store.delete("models", f"{step.output}/manifest.json")
    _commit(store, tmp_path, "models", step.output, {"kind": "trained", "spec": {**step.identity, "output_name": step.output,
                                                                                  "save_steps": 9},
                                                     "parents": ["Qwen3-tiny-base"]})
    assert identity.step_status(store, step) == ("done", "")
    _commit(store, tmp_path, "evaluations", ev.output, {"kind": "evaluation", "parent_digests": ["someone-else"]})
    assert identity.step_status(store, ev)[0] == "conflict"


def test_a_chosen_models_evaluation_is_done_on_a_rerun(store, tmp_path):
    """A test evaluation waits for the lr_sweep's choice (``…@select`` in its ``after``), but the
    evaluator records only the evaluated model's digest: a rerun must find it done, not a conflict
    (every chosen model's evaluation was refused as one on the mini-study's second run)."""
    exp = plan(spec(datasets=["squad"], train=[{"lora": {"r": 4}}], evaluate={"tasks": [{"task": "squad_v2", "limit": 2}]},
                    lr_sweep={"rates": {"lora": [1e-4, 1e-3]},
                              "select_on": {"task": "squad_v2", "dataset": "squad", "split": "validation"}}))
    step = exp.stage("train")[0]
    ev = next(s for s in exp.stage("evaluate") if s.spec["model"] == step.output and "candidate" in s.labels)
    assert any(a.endswith("@select") for a in ev.after)
    _commit(store, tmp_path, "models", step.output, {"kind": "trained", "spec": step.identity, "parents": step.parents,
                                                     "config_digest": step.digest})
    _commit(store, tmp_path, "evaluations", ev.output, {"kind": "evaluation", "parent_digests": [step.digest]})
    assert identity.step_status(store, ev) == ("done", "")
