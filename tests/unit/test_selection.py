"""Learning rates chosen on validation (flows/selection.py): the plan trains every rate, scores each
on the validation split only, and gates the test evaluation and quantization on the choice; at run
time the best validation score wins and only the chosen model is scored on test (the pipeline's
run_step, up to the service call)."""
from __future__ import annotations

import json

import pytest

from flows import pipeline, selection
from flows.experiment import plan
from services.common.contract.errors import ValidationError
from services.common.storage import artifacts
from services.common.storage.store import LocalStore

SEL = {"task": "squad_v2", "dataset": "squad-val", "split": "validation", "limit": 20}


def spec(**kw):
    return {"name": "t", "base_models": ["Qwen3-tiny-base"], "datasets": ["squad"],
            "defaults": {"max_steps": 2},
            "train": [{"peft_method": "lora", "lora": {"r": 8}}, {"peft_method": "none", "learning_rate": 1e-5}],
            "quantize": [{"methods": ["bnb_int8"], "where": {"peft_method": "lora"}}],
            "lr_sweep": {"rates": {"lora": [1e-4, 5e-4, 2e-3]}, "select_on": SEL},
            "evaluate": {"tasks": [{"task": "squad_v2", "limit": 50}], "max_new_tokens": 16}, **kw}


def test_plan_trains_every_rate_scores_validation_and_gates_test_on_the_choice():
    exp = plan(spec())
    lora = "Qwen3-tiny-squad_SFT_LoRa8_NoQuant"
    cands = [lora.replace("LoRa8_", f"LoRa8_lr{r}_") for r in ("1e-4", "5e-4", "2e-3")]
    trained = {s.output: s.spec["learning_rate"] for s in exp.stage("train")}
    assert trained == {**dict(zip(cands, [1e-4, 5e-4, 2e-3])), "Qwen3-tiny-squad_SFT_NoPeft_NoQuant": 1e-5}
    val = [s for s in exp.stage("evaluate") if s.labels.get("split") == "validation"]
    assert [s.spec["model"] for s in val] == cands
    assert all(s.spec["tasks"] == [SEL | {"task": "squad_v2"}] and s.after == [s.spec["model"]] for s in val)
    (sel,) = exp.stage("select")
    assert sel.after == [s.output for s in val] and sel.output == selection.select_output(lora)
    test = [s for s in exp.stage("evaluate") if s.labels.get("split") != "validation"]
    gated = [s for s in test + exp.stage("quantize") if sel.output in s.after]
    # each candidate's test evaluation, INT8 and HF evaluation (like for like with the INT8), and
    # nothing else, waits for the choice
    assert sorted(s.labels["candidate"] for s in gated) == sorted(cands * 3)
    assert all(s.spec["tasks"][0].get("split", "test") == "test" for s in test)
    order = [s.output for s in exp.steps]  # every step after what it needs (the flow submits in order)
    assert all(order.index(d) < order.index(s.output) for s in exp.steps for d in s.after if d in order)


def test_bad_sweeps_are_refused_all_at_once():
    with pytest.raises(ValidationError) as e:
        plan(spec(lr_sweep={"rates": {"lora": [1e-3], "vera": "fast"}, "select_on": {**SEL, "split": "test",
                                                                                      "metric": "bleu"}, "x": 1}))
    text = " | ".join(e.value.problems)
    for needle in ("unknown key 'x'", "rates.lora", "rates.vera", "select_on.split: 'test'", "'bleu'"):
        assert needle in text, needle


def _commit_eval(store, tmp_path, model, eval_id, f1):
    d = tmp_path / f"{model}-{eval_id}"
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"datasets": {"squad_v2": {"metrics": {"F1": f1, "EM": f1}}}}))
    artifacts.commit_dir(store, "evaluations", f"{model}/{eval_id}", d, {"kind": "evaluation"})


def test_selection_picks_on_validation_and_only_the_chosen_is_scored_on_test(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_STORAGE", "local")
    monkeypatch.setenv("FTLAB_LOCAL_ROOT", str(tmp_path / "store"))
    store = LocalStore(tmp_path / "store")
    store.ensure_buckets()
    exp = plan(spec())
    val = {s.spec["model"]: s for s in exp.stage("evaluate") if s.labels.get("split") == "validation"}
    scores = dict(zip(val, [8.0, 21.5, 13.0]))
    for model, step in val.items():
        _commit_eval(store, tmp_path, model, step.spec["eval_id"], scores[model])
    best = max(scores, key=scores.get)
    # a test evaluation of a loser that beats the winner on test must change nothing: test is never read
    loser_test = next(s for s in exp.stage("evaluate") if s.labels.get("candidate") == min(scores, key=scores.get))
    _commit_eval(store, tmp_path, loser_test.spec["model"], loser_test.spec["eval_id"], 99.0)

    ups = [{"key": s.key, "stage": "evaluate", "output": s.output, "status": "succeeded"} for s in val.values()]
    (sel,) = exp.stage("select")
    chosen = pipeline.run_step.fn(sel, exp.name, 10.0, ups)
    assert (chosen["status"], chosen["chosen"], chosen["scores"], chosen["by_rate"]) == ("succeeded", best, scores, scores)

    runs, skipped = [], []
    for s in exp.steps:
        if s.stage in ("evaluate", "quantize") and sel.output in s.after:
            (runs if selection.gated(s, [chosen]) is None else skipped).append(s)
    # its test evaluation, its INT8 and its evaluation under HF (the INT8's like-for-like parent)
    assert {s.labels["candidate"] for s in runs} == {best} and len(runs) == 3
    assert len(skipped) == 6
    # the pipeline never submits a gated step (it returns before any service call)
    r = pipeline.run_step.fn(loser_test, exp.name, 10.0, [chosen])
    assert r["status"] == selection.NOT_SELECTED and best in r["error"]
    # anything made from a model not selected is not run either (the INT8 of a loser's evaluation)
    int8_eval = next(s for s in exp.stage("evaluate") if "Int8" in s.spec["model"] and best not in s.spec["model"])
    assert pipeline.run_step.fn(int8_eval, exp.name, 10.0, [r | {"output": "x"}])["status"] == selection.NOT_SELECTED
    lines = "\n".join(selection.report_lines([chosen]))
    assert best in lines and "lr5e-4: 21.5" in lines


def test_the_seeds_of_a_configuration_are_chosen_together_on_their_mean(tmp_path):
    """With #25's seeds (``_s1``, ``_s2`` in the names) one group holds every seed of every rate;
    the rate with the best mean validation score wins, for all its seeds."""
    store = LocalStore(tmp_path / "store")
    store.ensure_buckets()
    exp = plan(spec(train=[{"peft_method": "lora", "lora": {"r": 8}, "output_name": "M-d_SFT_LoRa8_s1_NoQuant"},
                           {"peft_method": "lora", "lora": {"r": 8}, "seed": 2, "output_name": "M-d_SFT_LoRa8_s2_NoQuant"}],
                    quantize=[], lr_sweep={"rates": {"lora": [1e-4, 1e-3]}, "select_on": SEL}))
    (sel,) = exp.stage("select")
    val = [s for s in exp.stage("evaluate") if s.labels.get("split") == "validation"]
    assert len(sel.after) == 4 and sel.spec["group"] == "M-d_SFT_LoRa8_NoQuant"
    # lr 1e-3 wins one seed by a little and loses the other by a lot: its mean is lower
    f1 = {"lr1e-4_s1": 10.0, "lr1e-4_s2": 30.0, "lr1e-3_s1": 12.0, "lr1e-3_s2": 14.0}
    for s in val:
        _commit_eval(store, tmp_path, s.spec["model"], s.spec["eval_id"],
                     next(v for k, v in f1.items() if k in s.spec["model"]))
    r = selection.run_select(sel, [], store)
    assert r["chosen"] == "M-d_SFT_LoRa8_lr1e-4_NoQuant" and r["by_rate"][r["chosen"]] == 20.0
    test = [s for s in exp.stage("evaluate") if s.labels.get("split") != "validation"]
    runs = [s.spec["model"] for s in test if "candidate" in s.labels and selection.gated(s, [r]) is None]
    assert runs == ["M-d_SFT_LoRa8_lr1e-4_s1_NoQuant", "M-d_SFT_LoRa8_lr1e-4_s2_NoQuant"]
    assert "lr1e-4: 20 (mean of 2 seeds)" in "\n".join(selection.report_lines([r]))


def test_rate_names():
    assert [selection.rate_tag(r) for r in (1e-4, 5e-4, 2e-3, 0.01, 0.05)] == \
        ["lr1e-4", "lr5e-4", "lr2e-3", "lr0.01", "lr0.05"]
    assert selection.candidate_name("M-d_SFT_VeRa256_s2_NoQuant", 0.05) == "M-d_SFT_VeRa256_lr0.05_s2_NoQuant"
    assert selection.candidate_name("mine", 1e-4) == "mine_lr1e-4"


def test_choose_ties_go_to_the_earlier_rate_and_lower_is_better_works():
    assert selection.choose({"a": 1.0, "b": 1.0, "c": None}, True) == "a"
    assert selection.choose({"a": 3.0, "b": 1.0}, False) == "b"
    assert selection.choose({"a": None}, True) is None


def test_dry_run_counts_the_steps_gated_on_the_choice_apart(monkeypatch):
    """``ftlab run --dry-run``: a candidate's test evaluation, its INT8, the INT8's evaluation and the
    candidate's HF evaluation (like for like with its INT8) wait for the choice; of the three rates'
    twelve such steps only the chosen rate's four run."""
    from flows import dryrun
    monkeypatch.setenv("FTLAB_DEVICE", "cpu")
    exp = plan(spec())
    gated = dryrun.gated_on_selection(exp.steps)
    cands = {s.output for s in exp.stage("train") if "_lr" in s.output}
    made = {s.output for s in exp.stage("quantize") if s.spec["source_model"] in cands}
    want = {s.key for s in exp.steps if s.stage in ("evaluate", "quantize") and s.labels.get("split") != "validation"
            and (s.spec.get("model") in cands | made or s.spec.get("source_model") in cands)}
    assert len(want) == 12 and set(gated) == want and set(gated.values()) == {3}  # with the HF re-scorings
    text = dryrun.render(exp, None, "nowhere")
    # 4 trainings, 3 validation evaluations, the select step, the base and the full fine-tune scored on test
    # a select step is no job: the summary counts jobs by stage, and the select steps apart
    assert "21 jobs: 4 train, 3 quantize, 14 evaluate; and 1 select step(s)" in text, text
    assert ("to run: 9 (4 train, 0 quantize, 5 evaluate); gated on the lr_sweep's choice: 12 (only the chosen "
            "rate's 4 run)") in text, text
    assert "jobs that will run: 13 (4 train, 1 quantize, 8 evaluate)" in text, text
    assert "of which like for like: 3 evaluation(s)" in text, text
    rows = [line.split() for line in text.splitlines() if line.split()[:1] in (["evaluate"], ["quantize"])]
    assert sum(r[1] == "gated" for r in rows) == 12


def test_a_sweep_on_one_seed_trains_the_other_seeds_at_the_chosen_rate_only(tmp_path):
    """``lr_sweep.seeds: [1]`` with ``seeds: [1, 2, 3]``: seed 1 trains at every rate and is scored
    on validation; seeds 2 and 3 are planned at every rate but wait for the choice, and only the
    chosen rate's run (3 rates x 1 seed + 2 seeds = 5 trainings instead of 9)."""
    store = LocalStore(tmp_path / "store")
    store.ensure_buckets()
    exp = plan(spec(seeds=[1, 2, 3], quantize=[],
                    lr_sweep={"rates": {"lora": [1e-4, 5e-4, 2e-3]}, "select_on": SEL, "seeds": [1]}))
    (sel,) = exp.stage("select")
    val = [s for s in exp.stage("evaluate") if s.labels.get("split") == "validation"]
    assert sorted(s.spec["model"] for s in val) == sorted(
        f"Qwen3-tiny-squad_SFT_LoRa8_lr{r}_s1_NoQuant" for r in ("1e-4", "5e-4", "2e-3"))
    followers = [s for s in exp.stage("train") if sel.output in s.after]
    assert len(followers) == 6 and all("_s1_" not in s.output for s in followers)
    order = [s.output for s in exp.steps]  # the flow submits in order: a follower after the choice
    assert all(order.index(d) < order.index(s.output) for s in exp.steps for d in s.after if d in order)
    for s, f1 in zip(val, (10.0, 30.0, 20.0)):
        _commit_eval(store, tmp_path, s.spec["model"], s.spec["eval_id"], f1)
    r = selection.run_select(sel, [], store)
    assert r["chosen"] == "Qwen3-tiny-squad_SFT_LoRa8_lr5e-4_NoQuant"
    runs = [s.output for s in followers if selection.gated(s, [r]) is None]
    assert runs == ["Qwen3-tiny-squad_SFT_LoRa8_lr5e-4_s2_NoQuant", "Qwen3-tiny-squad_SFT_LoRa8_lr5e-4_s3_NoQuant"]
    test = [s for s in exp.stage("evaluate") if s.labels.get("split") != "validation" and "candidate" in s.labels]
    assert sorted(s.spec["model"] for s in test if selection.gated(s, [r]) is None) == sorted(
        f"Qwen3-tiny-squad_SFT_LoRa8_lr5e-4_s{k}_NoQuant" for k in (1, 2, 3))
    from flows import dryrun
    text = dryrun.render(exp, None, "nowhere")
    assert "to run: 13 (6 train, 0 quantize, 7 evaluate); gated on the lr_sweep's choice: 15 (only the chosen " \
           "rate's 5 run)" in text, text
    assert "jobs that will run: 18 (8 train, 0 quantize, 10 evaluate)" in text, text  # 3 + 2 LoRA, 3 full FT
    # with the validation scores in storage the dry run knows the choice: the other rates' 2 trainings
    # and 3 test evaluations each never run, and nothing waits on a choice any more
    decided = dryrun.render(exp, store, "here")
    assert "not chosen on validation (never run): 10" in decided and "gated" not in decided, decided
    def row(output):
        return next(line for line in decided.splitlines() if f" {output} " in line)
    assert row("Qwen3-tiny-squad_SFT_LoRa8_lr5e-4_s2_NoQuant").startswith("train     todo ")
    assert row("Qwen3-tiny-squad_SFT_LoRa8_lr2e-3_s2_NoQuant").startswith("train     not chosen ")
    with pytest.raises(ValidationError, match=r"lr_sweep.seeds: \[4\] not among"):
        plan(spec(seeds=[1, 2], lr_sweep={"rates": {"lora": [1e-4, 5e-4]}, "select_on": SEL, "seeds": [4]}))
    with pytest.raises(ValidationError, match="lr_sweep.seeds: 'one'"):
        plan(spec(lr_sweep={"rates": {"lora": [1e-4, 5e-4]}, "select_on": SEL, "seeds": "one"}))
