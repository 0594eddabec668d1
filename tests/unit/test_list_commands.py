"""``ftlab data list`` / ``model list`` / ``eval list``: one form for all three (ftlab/listing.py),
read from what storage really holds. ``eval list`` over real evaluations: tests/integration/test_evaluator.py."""
from __future__ import annotations

import json

import pytest

from ftlab import cli
from services.common.storage import artifacts
from tests.conftest import TINY


@pytest.fixture
def listed(seeded_store, monkeypatch, tmp_path):
    monkeypatch.setenv("FTLAB_STORAGE", "local")
    monkeypatch.setenv("FTLAB_LOCAL_ROOT", str(seeded_store.root))
    child = tmp_path / "child"
    child.mkdir()
    (child / "config.json").write_text("{}")
    artifacts.commit_dir(seeded_store, "models", "Qwen3-tiny-base_bnb8", child, {
        "kind": "quantized", "name": "Qwen3-tiny-base_bnb8", "parents": [TINY],
        "quantization": {"method": "bnb_int8", "quant_tag": "BNB_INT8"}})
    return seeded_store


def _json(capsys, *argv):
    assert cli.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _table(capsys, *argv):
    assert cli.main(list(argv)) == 0
    return capsys.readouterr().out.rstrip("\n").split("\n")


def test_data_and_model_list_show_what_storage_holds(listed, capsys):
    arc = artifacts.read_manifest(listed, "datasets", "arc")
    assert _json(capsys, "data", "list") == [{
        "name": "arc", "task": arc["task"], "source": "seed", "created": arc["created_at"],
        "rows": {s: v["rows"] for s, v in arc["splits"].items()}}]
    models = _json(capsys, "model", "list")
    assert [(m["name"], m["kind"], m["parent"], m["quantization"]) for m in models] == [
        (TINY, "base", None, "NoQuant"), ("Qwen3-tiny-base_bnb8", "quantized", TINY, "BNB_INT8")]
    assert all(m["created"] == artifacts.read_manifest(listed, "models", m["name"])["created_at"] for m in models)

    # The tables: a header, one line per row, columns aligned, "-" for what a row lacks.
    lines = _table(capsys, "model", "list")
    assert lines[0].split() == ["model", "kind", "parent", "quantization", "created"] and len(lines) == 3
    at = lines[0].index("created")
    assert [ln[at:] for ln in lines[1:]] == [m["created"] for m in models]
    assert lines[1].split()[1:4] == ["base", "-", "NoQuant"] and lines[2].split()[1:4] == ["quantized", TINY, "BNB_INT8"]
    lines = _table(capsys, "data", "list")
    assert lines[0].split() == ["dataset", "task", "source", "rows", "created"] and len(lines) == 2
    assert " ".join(f"{s}={v['rows']}" for s, v in arc["splits"].items()) in lines[1]


def test_eval_list_of_an_empty_store_says_so_and_eval_still_submits(listed, capsys):
    assert _table(capsys, "eval", "list") == ["no evaluations in storage"]
    assert _json(capsys, "eval", "list") == []
    args = cli.build_parser().parse_args(["eval", "--model", TINY, "--task", "arc"])
    assert args.func is cli.cmd_eval and args.model == TINY
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", "list", "--model", TINY])  # list takes no job options
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    assert "ftlab eval list" in capsys.readouterr().out
