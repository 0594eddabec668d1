"""The door of `ftlab run` / `--dry-run` / `--seed` (flows/door.py): a new user's trial found bad
input reported in several rounds, blamed on the wrong thing, repeated, accepted silently, or
refused only after empty storage folders were made. Each case here goes through the real command
(`ftlab.cli.main`), the real planner and a real LocalStore; nothing is stubbed but the flow itself
(which must never start)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import yaml

from flows.experiment import plan
from services.common.contract.errors import ValidationError
from services.common.storage import artifacts
from services.common.storage.store import LocalStore

SEL = {"task": "squad_v2", "dataset": "squad-val", "split": "validation", "limit": 20}
# SmolLM2-135M's widths: hidden 576 (9 heads of 64), intermediate 1536
SMOL = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
        "head_dim": 64, "num_hidden_layers": 30}


def spec(**kw):
    return {"name": "t", "base_models": ["Qwen3-tiny-base"], "datasets": ["squad-val"],
            "defaults": {"max_steps": 2}, "train": [{"peft_method": "lora", "lora": {"r": 8}}],
            "lr_sweep": {"rates": {"lora": [1e-4, 1e-3]}, "select_on": SEL},
            "evaluate": {"tasks": [{"task": "squad_v2", "dataset": "squad-val", "limit": 20}]}, **kw}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An FTLAB_HOME with its storage (local) inside, and the flow replaced by a failure."""
    from ftlab import cli
    home = tmp_path / "home"
    home.mkdir()
    for key, value in {"FTLAB_HOME": str(home), "FTLAB_STORAGE": "local", "FTLAB_LOCAL_ROOT": str(home / "storage"),
                       "FTLAB_TRACKING_URI": ""}.items():
        monkeypatch.setenv(key, value)  # cli._store() exports the stack's settings: keep them to this test
    monkeypatch.setattr(cli, "run_flow", lambda *a, **k: pytest.fail("the flow started"))
    return home


def run(capsys, path: Path, *flags: str) -> tuple[int, str]:
    from ftlab import cli
    rc = cli.main(["run", str(path), *flags])
    out = capsys.readouterr()
    return rc, out.err + out.out


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def test_schema_problems_and_missing_splits_come_in_one_round(home, tmp_path, capsys):
    # item 1: a split no dataset will have was reported only once the schema was clean
    path = write(tmp_path / "x.yaml", spec(data={"prepare": {"squad-val": "study-squad"}}, timeouts_s={"train": -1}))
    for flags in (("--dry-run",), ()):
        rc, err = run(capsys, path, *flags)
        assert rc == 2 and "invalid request" in err, err
        assert "timeouts_s.train: -1 must be a number of seconds > 0" in err, err
        assert "dataset 'squad-val' has no 'validation' split" in err, err


def test_a_refused_run_or_dry_run_leaves_ftlab_home_as_it_was(home, tmp_path, capsys):
    # item 5: a refused dry run made the storage buckets (empty folders) under FTLAB_HOME
    before = tree(home)
    path = write(tmp_path / "x.yaml", spec(data={"prepare": {"squad-val": "study-squad"}}))
    for flags in (("--dry-run",), ()):
        assert run(capsys, path, *flags)[0] == 2
        assert tree(home) == before
    assert run(capsys, tmp_path / "nosuch.yaml", "--dry-run")[0] == 2
    # a dry run that passes only reads storage too
    assert run(capsys, write(path, spec(data={"prepare": {"squad-val": "squad-val"}})), "--dry-run")[0] == 0
    assert tree(home) == before


def test_seed_flag_problems_name_the_flag_not_the_file(home, tmp_path, capsys):
    # item 2: `--seed -1` read "<file>: seeds: [-1] must be ..."
    path = write(tmp_path / "x.yaml", spec(evaluate={"tasks": [{"task": "ai2_arc", "limit": 2}]}, lr_sweep=None,
                                           datasets=["arc"]))
    rc, err = run(capsys, path, "--dry-run", "--seed", "-1", "--seed", "3")
    assert rc == 2 and "  - --seed: -1 must be in [0, 2**31)" in err, err
    assert str(path) not in err and "seeds:" not in err, err
    rc, err = run(capsys, path, "--dry-run", "--seed", "2", "--seed", "2")
    assert rc == 2 and "  - --seed 2 --seed 2 gives a seed twice" in err, err
    # a file's own train seed against the flag: the file's line, named with the flag's seeds
    path = write(path, spec(evaluate={"tasks": [{"task": "ai2_arc", "limit": 2}]}, lr_sweep=None, datasets=["arc"],
                            train=[{"peft_method": "lora", "seed": 5}]))
    rc, err = run(capsys, path, "--dry-run", "--seed", "1")
    assert rc == 2 and f"{path}: train[0].seed: set here and by --seed 1" in err, err
    rc, err = run(capsys, path, "--dry-run")  # without the flag the file is fine
    assert rc == 0, err


def test_every_problem_of_the_seeds_in_one_answer():
    # a seed out of range hid the repeated seed and the entry's own seed (the new-user trial)
    with pytest.raises(ValidationError) as exc:
        plan(spec(lr_sweep=None, seeds=[1, 1, -3], train=[{"peft_method": "lora", "seed": 5}]))
    problems = [x.removeprefix("<spec>: ") for x in exc.value.problems]
    assert "seeds: [1, 1, -3] must be a non-empty list of integers in [0, 2**31)" in problems, problems
    assert "seeds: [1, 1, -3] gives a seed twice" in problems, problems
    assert any(x.startswith("train[0].seed: set here and by seeds: [1, 1, -3]") for x in problems), problems


def test_a_refused_max_steps_is_said_once():
    # -2 was refused, then its stand-in 0 was refused again as "0 must be > 0" (a value never given)
    with pytest.raises(ValidationError) as exc:
        plan(spec(lr_sweep=None, defaults={"max_steps": -2}))
    assert [x for x in exc.value.problems if "max_steps" in x] == [
        "<spec>: defaults.max_steps: -2 must be in [1, 1000000]"], exc.value.problems


def test_an_unknown_key_in_defaults_is_said_once():
    # the wire's parse ("unknown key") and the trainer's strict check ("unknown field") both refused it
    with pytest.raises(ValidationError) as exc:
        plan(spec(lr_sweep=None, defaults={"bogus_field": 1}))
    assert len([x for x in exc.value.problems if "bogus_field" in x]) == 1, exc.value.problems


def test_a_bad_default_is_one_problem_naming_defaults():
    # item 3: one bad defaults value came back once per train entry (and per matrix value)
    with pytest.raises(ValidationError) as exc:
        plan(spec(lr_sweep=None, defaults={"learning_rate": 5, "lora": {"r": 0}},
                  train=[{"peft_method": "lora"}, {"peft_method": "dora"}, {"peft_method": "lora", "max_steps": [1, 2]},
                         {"peft_method": "lora", "lora": {"r": 4}, "learning_rate": 7}]))
    problems = exc.value.problems
    assert [x for x in problems if "learning_rate" in x] == ["<spec>: defaults.learning_rate: 5.0 must be in (0, 1]",
                                                             "<spec>: train[3].learning_rate: 7.0 must be in (0, 1]"]
    assert [x for x in problems if "lora.r" in x] == ["<spec>: defaults.lora.r: 0 must be in [1, 4096]"], problems
    # a default refused because of what an entry sets is the entry's problem
    with pytest.raises(ValidationError, match=r"train\[1\]\.lora: adapter settings given but peft_method is 'none'"):
        plan(spec(lr_sweep=None, defaults={"lora": {"dropout": 0.0}},
                  train=[{"peft_method": "lora"}, {"peft_method": "none"}]))


def test_rates_for_a_method_no_entry_trains_are_refused():
    # item 4: lr_sweep.rates.dora with only LoRA trained was ignored silently
    with pytest.raises(ValidationError) as exc:
        plan(spec(lr_sweep={"rates": {"lora": [1e-4, 1e-3], "dora": [1e-4, 1e-3]}, "select_on": SEL},
                  data={"prepare": {"squad-val": "squad-val"}}))
    (problem,) = exc.value.problems
    assert "lr_sweep.rates.dora: no train entry trains peft_method 'dora' (the plan trains: lora)" in problem
    # an entry that could not be planned may be the one that trains it: only its own problem is reported
    with pytest.raises(ValidationError) as exc:
        plan(spec(lr_sweep={"rates": {"dora": [1e-4, 1e-3]}, "select_on": SEL},
                  train=[{"peft_method": "lora"}, {"peft_method": "dora", "lora": {"r": 0}}]))
    assert [x.split(": ")[1] for x in exc.value.problems] == ["train[1].lora.r"], exc.value.problems


def test_a_missing_experiment_is_bad_input(home, capsys):
    # item 8: `ftlab run nosuch` exited 1 ("NotFoundError: ...") where other bad input exits 2
    from ftlab import cli
    assert cli.main(["run", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ftlab: invalid request:\n  - no experiment 'nosuch'; shipped: ") and "smoke" in err, err


def _commit_base(root: Path, name: str, config: dict) -> None:
    store = LocalStore(root)
    store.ensure_buckets()
    with tempfile.TemporaryDirectory() as d:
        Path(d, "config.json").write_text(json.dumps(config))
        artifacts.commit_dir(store, "models", name, d, {"kind": "base"})


def test_a_group_size_the_base_models_widths_refuse_is_refused_before_training(home, tmp_path, capsys):
    # item 7: gptq group_size 128 on SmolLM2 (576-wide layers) planned, trained, then failed at the
    # quantizer's door; w4a16's default group size (128) too
    _commit_base(home / "storage", "SmolLM2-135M-Instruct", SMOL)
    raw = spec(base_models=["SmolLM2-135M-Instruct"], datasets=["arc"], lr_sweep=None,
               evaluate={"tasks": [{"task": "ai2_arc", "limit": 2}]},
               quantize=[{"methods": ["gptq"], "options": {"group_size": 128}}, {"methods": ["w4a16", "awq"]}])
    path = write(tmp_path / "x.yaml", raw)
    before = tree(home)
    rc, err = run(capsys, path, "--dry-run")
    assert rc == 2, err
    assert ("quantize gptq of SmolLM2-135M-Instruct models: group_size: 128 does not divide the in-features of 6 "
            "quantized layer kind(s)") in err, err
    assert "quantize w4a16 of SmolLM2-135M-Instruct models: group_size: 128" in err, err
    assert "awq" not in err  # its default, 64, divides 576 and 1536
    assert tree(home) == before
    raw["quantize"] = [{"methods": ["gptq", "w4a16"], "options": {"group_size": 64}}]
    assert run(capsys, write(path, raw), "--dry-run")[0] == 0
    # without storage the powers of two are all the plan can check
    raw["quantize"] = [{"methods": ["gptq"], "options": {"group_size": 96}}]
    with pytest.raises(ValidationError, match=r"quantize\[0\]\.group_size: 96 is not a power of two"):
        plan(raw)



def test_a_refused_run_makes_no_bucket_on_s3(home, tmp_path, monkeypatch, capsys):
    # item 5 on the other backend: the door read a real S3 server (moto, its own: a fresh one holds
    # no bucket) after making its buckets
    from minio import Minio

    from tests.s3_server import TEST_ACCESS_KEY, TEST_SECRET_KEY, MotoServer
    with MotoServer(start_timeout_s=120) as server:  # a generous start: the 2-core machine may be busy
        for key, value in {"FTLAB_STORAGE": "s3", "FTLAB_S3_ENDPOINT": server.endpoint, "FTLAB_S3_REGION": "us-east-1",
                           "FTLAB_S3_ACCESS_KEY": TEST_ACCESS_KEY, "FTLAB_S3_SECRET_KEY": TEST_SECRET_KEY}.items():
            monkeypatch.setenv(key, value)
        path = write(tmp_path / "x.yaml", spec(data={"prepare": {"squad-val": "study-squad"}}))
        for flags in (("--dry-run",), ()):
            rc, err = run(capsys, path, *flags)
            assert rc == 2 and "dataset 'squad-val' has no 'validation' split" in err, err
        client = Minio(server.endpoint, access_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY, secure=False,
                       region="us-east-1")
        assert client.list_buckets() == []
