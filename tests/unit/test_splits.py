"""A split the plan reads that no dataset has or will have is refused at the door (flows/splits.py):
an lr_sweep's validation split on a dataset imported or prepared without one (issue #25, a new
user's trial), by `ftlab run --dry-run`, `ftlab run` and the flow, every such split at once, nothing
written. Real storage (LocalStore), real imports and recipes."""
from __future__ import annotations

import pytest
import yaml

from flows.experiment import plan
from flows.splits import split_problems
from services.common.contract.errors import ValidationError
from services.common.data.importing import import_dataset
from tests.conftest import SEED_DATA, require_shared

SEL = {"task": "squad_v2", "dataset": "squad-val", "split": "validation", "limit": 20}


def spec(**kw):
    return {"name": "t", "base_models": ["Qwen3-tiny-base"], "datasets": ["squad-val"],
            "defaults": {"max_steps": 2}, "train": [{"peft_method": "lora", "lora": {"r": 8}}],
            "lr_sweep": {"rates": {"lora": [1e-4, 1e-3]}, "select_on": SEL},
            "evaluate": {"tasks": [{"task": "squad_v2", "dataset": "squad-val", "limit": 20}]}, **kw}


def test_a_recipe_without_a_validation_split_is_refused_with_the_fix():
    exp = plan(spec(data={"prepare": {"squad-val": "study-squad"}}))
    (problem,) = split_problems(None, exp)
    for fragment in ("dataset 'squad-val' has no 'validation' split", "its splits: test, train",
                     "recipe 'study-squad' (data.prepare.squad-val)", "lr_sweep.select_on",
                     "`ftlab data prepare squad-val`"):
        assert fragment in problem, (fragment, problem)
    assert split_problems(None, plan(spec(data={"prepare": {"squad-val": "squad-val"}}))) == []  # it draws one
    # nothing says what the dataset will hold (no data section, storage unknown): the data step reports it
    assert split_problems(None, plan(spec())) == []


def test_stored_and_imported_datasets_without_one_are_refused_all_at_once(store):
    require_shared()
    import_dataset(store, "arc", "seed", str(SEED_DATA))  # a plain `ftlab data import`: train and test
    exp = plan(spec(datasets=["arc"], train=[{"peft_method": "lora", "lora": {"r": 8}}],
                    lr_sweep={"rates": {"lora": [1e-4, 1e-3]}, "select_on": {"task": "ai2_arc", "split": "validation"}},
                    evaluate={"tasks": ["ai2_arc", {"task": "squad_v2", "split": "validation"}]},
                    data={"source": "seed", "path": str(SEED_DATA)}))
    problems = split_problems(store, exp)
    assert len(problems) == 2, problems
    arc, squad = problems
    assert "dataset 'arc' has no 'validation' split (its splits: test, train; from dataset 'arc' in storage)" in arc
    assert "lr_sweep.select_on" in arc and "recipe" in arc
    assert "dataset 'squad' has no 'validation' split" in squad and "the data section's import" in squad
    assert "`ftlab data prepare squad-val`" in squad and "e.g. evaluate:" in squad


def test_ftlab_run_and_its_dry_run_refuse_and_write_nothing(tmp_path, monkeypatch, capsys):
    from ftlab import cli
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FTLAB_STORAGE", "local")
    monkeypatch.setenv("FTLAB_LOCAL_ROOT", str(tmp_path / "storage"))
    monkeypatch.setenv("FTLAB_TRACKING_URI", "")  # cli._store() exports the stack's settings: keep them to this test
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec(data={"prepare": {"squad-val": "study-squad"}})))
    ran = []
    monkeypatch.setattr(cli, "run_flow", lambda *a, **k: ran.append(a))
    for argv in (["run", str(path), "--dry-run"], ["run", str(path)]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "invalid request" in err and "dataset 'squad-val' has no 'validation' split" in err, err
    assert ran == []
    written = [p for p in (tmp_path / "storage").rglob("*") if p.is_file()] if (tmp_path / "storage").exists() else []
    assert written == []
    path.write_text(yaml.safe_dump(spec(data={"prepare": {"squad-val": "squad-val"}})))
    assert cli.main(["run", str(path), "--dry-run"]) == 0
    assert "select" in capsys.readouterr().out


def test_the_flow_refuses_before_anything_runs(store, monkeypatch, tmp_path):
    """The flow's own door (a Prefect deployment runs it without the CLI)."""
    from flows import pipeline
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec(data={"prepare": {"squad-val": "study-squad"}})))
    monkeypatch.setattr(pipeline, "store_from_env", lambda **kw: store)
    monkeypatch.setattr(pipeline, "import_data", lambda exp: pytest.fail("the data step ran"))
    with pytest.raises(ValidationError, match="has no 'validation' split"):
        pipeline.experiment_flow.fn(str(path))
