"""The CLI's job flags are the job configs' Params: every spec field (proto) has a flag, no flag
lacks a field, the help shows choices and defaults, and a command line maps onto the config."""
from __future__ import annotations

import argparse

import pytest
from google.protobuf import json_format

from ftlab.cli import build_parser, spec_from_args
from services.common.generated.ftlab.v1 import evaluate_spec_pb2, quantize_spec_pb2, train_spec_pb2
from services.evaluator.config import EVALUATE_PARAMS
from services.quantizer.config import QUANTIZE_PARAMS
from services.trainer.config import ADAPTER_PARAMS, TRAIN_PARAMS, TrainConfig

JOB_FLAGS = {"-h", "--help", "--request-id", "--wait", "--timeout"}
COMMANDS = {"train": (TRAIN_PARAMS + ADAPTER_PARAMS, train_spec_pb2.TrainSpec),
            "quantize": (QUANTIZE_PARAMS, quantize_spec_pb2.QuantizeSpec),
            "eval": (EVALUATE_PARAMS, evaluate_spec_pb2.EvaluateSpec)}


def _subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _proto_fields(descriptor, prefix: str = "") -> set[str]:
    """The spec's field paths; a generic map (google.protobuf.Struct: the PEFT options) is ``name.*``."""
    out = set()
    for f in descriptor.fields:
        if f.message_type is not None and f.message_type.full_name == "google.protobuf.Struct":
            out.add(f"{prefix}{f.name}.*")
        elif f.message_type is not None:
            out |= _proto_fields(f.message_type, f"{prefix}{f.name}.")
        else:
            out.add(prefix + f.name)
    return out


@pytest.mark.parametrize("command", COMMANDS)
def test_one_flag_per_spec_field_and_no_other(command):
    params, message = COMMANDS[command]
    fields = _proto_fields(message.DESCRIPTOR)
    maps = {f[:-2] for f in fields if f.endswith(".*")}
    names = {p.name if p.name.split(".")[0] not in maps else p.name.split(".")[0] + ".*" for p in params}
    assert names == fields                                                    # every field is a Param
    flags = {s for a in _subparser(command)._actions for s in a.option_strings} - JOB_FLAGS
    flags -= {f"--no-{p.cli_flag[2:]}" for p in params if p.kind is bool}
    assert flags == {p.cli_flag for p in params}                              # ... and a flag


def test_help_shows_choices_and_the_services_defaults():
    text = _subparser("train").format_help()
    from services.trainer.peft import PEFT_METHODS
    assert f"--peft {{{','.join(PEFT_METHODS)}}}" in text and "(default: lora)" in text
    assert "(default: 8)" in text and "(default: 2 x r)" in text
    quant = " ".join(_subparser("quantize").format_help().split())
    assert "64 for gptq, awq, hqq, quarot; 128 for w4a16" in quant


def _sample(p):
    """A valid value unlike the default, and its command-line form."""
    if p.kind is bool:
        return (not p.default), [p.cli_flag if not p.default else f"--no-{p.cli_flag[2:]}"]
    if p.choices:
        value = next(c for c in p.choices[1:] if c != p.default)
    elif p.kind is list:
        return ["q_proj", "v_proj"], [p.cli_flag, "q_proj,v_proj"]
    elif p.kind is int:
        value = int(p.lo) + 3
    elif p.kind is float:
        value = p.lo + (min(p.hi, 1.0) - p.lo) / 4
    else:
        value = f"x-{p.key.replace('_', '-')}"
    return value, [p.cli_flag, str(value)]


@pytest.mark.parametrize("peft", ["dora", "vera", "lora_plus"])
def test_a_train_command_line_maps_onto_the_config(peft):
    argv, want = ["train"], {}
    from services.trainer.peft import PEFT_METHODS
    skip = {"peft_method", *(p.name for p in ADAPTER_PARAMS if p.key not in PEFT_METHODS[peft].fields),
            # a quantized base refuses any dtype but its own: each run checks one of the two
            "dtype" if peft == "dora" else "training_quant"}
    for p in TRAIN_PARAMS + ADAPTER_PARAMS:
        if p.name in skip:
            continue
        want[p.name], flag = _sample(p)
        argv += flag
    args = build_parser().parse_args(argv + ["--peft", peft])
    cfg = TrainConfig.resolve(spec_from_args(args, TRAIN_PARAMS + ADAPTER_PARAMS))
    assert cfg.peft_method == peft
    for name, value in want.items():
        head, _, key = name.partition(".")
        got = getattr(cfg.adapter, key) if key else getattr(cfg, name)
        assert got == value, name


@pytest.mark.parametrize("command", ["quantize", "eval"])
def test_quantize_and_eval_command_lines_reach_every_spec_field(command):
    params, message = COMMANDS[command]
    argv, want = [command], {}
    for p in params:
        want[p.name], flag = _sample(p)
        argv += flag
    args = build_parser().parse_args(argv)
    spec = spec_from_args(args, params)
    json_format.ParseDict(spec, message())  # a valid proto spec
    for name, value in want.items():
        node = spec
        for part in name.split("."):
            node = node[0] if isinstance(node, list) else node
            node = node[part]
        assert node == value, name


def test_jobs_takes_options_anywhere_and_the_service_from_the_job_id(monkeypatch):
    from ftlab import cli
    # "jobs get --service trainer ID" was refused: argparse gave "get" to both positionals
    for argv in (["get", "--service", "trainer", "train-1-x"], ["--service", "trainer", "get", "train-1-x"],
                 ["get", "train-1-x", "--service", "trainer"]):
        args = cli.jobs_parser().parse_intermixed_args(argv)
        assert (args.action, args.job_id, args.service) == ("get", "train-1-x", "trainer"), argv
    assert [cli.job_service(j) for j in ("train-20261130-042549-1129a086", "quantize-1-a", "evaluate-1-b", "x")] == \
        ["trainer", "quantizer", "evaluator", None]
    seen = []

    class Client:
        def __init__(self, service):
            seen.append(service)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def get(self, job_id):
            from services.common.generated.ftlab.v1 import jobs_pb2
            return jobs_pb2.Job(job_id=job_id)

        def list(self, states=(), page_size=50, page_token=""):
            from services.common.generated.ftlab.v1 import jobs_pb2
            return jobs_pb2.ListJobsResponse()

    monkeypatch.setattr("services.common.rpc.clients.ServiceClient", Client)
    assert cli.main(["jobs", "get", "quantize-1-a"]) == 0 and seen == ["quantizer"]
    assert cli.main(["jobs", "list"]) == 0 and seen[1:] == ["trainer", "quantizer", "evaluator"]
    assert cli.main(["jobs", "get", "nope"]) == 2


def test_python_dash_m_ftlab_is_the_command():
    import subprocess
    import sys
    for module in ("ftlab", "ftlab.cli"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "usage: ftlab" in out.stdout, (module, out.stderr)


def test_task_flags_list_the_task_registry():
    from services.common.data.tasks import list_tasks
    names = [t.name for t in list_tasks()]
    assert "boolq" in names  # "data import --task" listed arc | squad | openmath only
    for command in ("eval", "score", "evaluate-missing"):
        flag = next(a for a in _subparser(command)._actions if "--task" in a.option_strings)
        assert all(n in flag.help for n in names), (command, flag.help)
    data = next(a for a in _subparser("data")._actions if isinstance(a, argparse._SubParsersAction))
    flag = next(a for a in data.choices["import"]._actions if "--task" in a.option_strings)
    assert all(t.short in flag.help for t in list_tasks())


def test_report_copies_go_under_ftlab_home(monkeypatch, tmp_path):
    # --report-dir defaulted to ./.ftlab/reports whatever FTLAB_HOME said
    from ftlab import cli
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path))
    for argv in (["run", "smoke"], ["report", "smoke"], ["evaluate-missing", "--task", "ai2_arc"]):
        assert cli.build_parser().parse_args(argv).report_dir == str(tmp_path / "reports"), argv
    monkeypatch.delenv("FTLAB_HOME")
    assert cli.report_dir_default() == ".ftlab/reports"


def test_a_job_command_reports_every_bad_flag_at_once_and_sends_nothing(monkeypatch, capsys):
    """argparse stopped at the first bad value (`--max-steps abc`, `--peft foo`) and a range error
    reached the user only from a running service; now the flags' problems and the service's own checks
    (no storage) are listed together, and nothing is sent. An unknown flag is still argparse's."""
    from ftlab import cli
    sent = []

    class Client:
        def __init__(self, service):
            sent.append(service)

    monkeypatch.setattr("services.common.rpc.clients.ServiceClient", Client)
    cases = {("train", "--max-steps", "0", "--learning-rate", "5", "--peft", "foo", "--r", "x", "--per-device-batch-size",
              "abc", "--dataset", "arc"):
             ["--base-model: required", "--max-steps: 0 must be > 0", "--learning-rate: 5.0 must be in (0, 1]",
              "--peft: unknown 'foo'", "--r: 'x' is not an integer",
              "--per-device-batch-size: 'abc' is not an integer"],
             ("train", "--base-model", "B", "--dataset", "arc", "--peft", "pissa", "--training-quant", "int8",
              "--warmup-ratio", "2"):
             ["peft_method 'pissa' with training_quant 'int8'", "--warmup-ratio: 2.0 must be in [0, 1]"],
             ("quantize", "--method", "gptq", "--weights-bits", "99", "--group-size", "g"):
             ["--source-model: required", "--weights-bits: 99 must be in [1, 16]",
              "--group-size: 'g' is not an integer"],
             ("quantize", "--source-model", "M", "--method", "gptq", "--group-size", "7"):
             ["--group-size: 7 is not a power of two: gptq's output (compressed-tensors) is served by vLLM"],
             ("eval", "--task", "ai2_arc", "--task", "hellaswag", "--limit", "0", "--batch-size", "x", "--engine", "warp"):
             ["--model: required", "--limit: 0 must be in [1, 1000000]", "--task: unknown task 'hellaswag'",
              "--batch-size: 'x' is not an integer", "--engine: unknown 'warp'"]}
    for argv, fragments in cases.items():
        assert cli.main(list(argv)) == 2, argv
        err = capsys.readouterr().err
        for f in fragments:
            assert f in err, (argv, f, err)
        assert err.count("\n  - ") == len(fragments), err  # each once (a required field named by both, once)
    assert sent == []
    with pytest.raises(SystemExit):  # argparse's own: an unknown flag
        cli.main(["train", "--base-model", "B", "--dataset", "arc", "--bogus", "1"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
