"""Every registered PEFT method reaches every table that needs it: the CLI's --peft choices, the
proto's adapter block (every options field), the study's model name, the memory estimate, the rank
sweep of the report and the docs' table. A plugin file that registers a method is all it takes."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ftlab.cli import build_parser
from services.common.generated.ftlab.v1 import train_spec_pb2
from services.trainer import memory
from services.trainer.config import TrainConfig
from services.trainer.peft import PEFT_METHODS, PeftMethod, register_peft_method

DOCS = Path(__file__).resolve().parents[2] / "docs" / "TRAINER.md"


def _options(method: PeftMethod) -> dict:
    """Every option of the method with a valid value unlike its default (what a client may send)."""
    out = {}
    for prm in method.params():
        if prm.kind is list:
            out[prm.key] = ["q_proj"]
        elif prm.kind is int:
            out[prm.key] = int(prm.lo) + 3
        elif prm.kind is float:
            out[prm.key] = prm.lo + (min(prm.hi, 1.0) - prm.lo) / 4
        else:
            out[prm.key] = not prm.default if prm.kind is bool else prm.choices[-1]
    return out


def _through_the_wire(spec: dict) -> TrainConfig:
    """``spec`` sent by a client as binary proto, read by the trainer's door."""
    from google.protobuf import json_format

    from services.common.rpc.job_servicer import spec_to_dict
    sent = json_format.ParseDict(spec, train_spec_pb2.TrainSpec()).SerializeToString()
    return TrainConfig.resolve(spec_to_dict(train_spec_pb2.TrainSpec.FromString(sent)), "cpu")


def _train_flags() -> dict[str, argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    return {s: a for a in sub._actions for s in a.option_strings}


@pytest.mark.parametrize("name", PEFT_METHODS)
def test_a_registered_method_is_in_every_table(name):
    method = PEFT_METHODS[name]
    assert name in _train_flags()["--peft"].choices                                   # the CLI
    sent = _options(method)  # every option, typed as sent (a rank stays an int), through the proto
    got = _through_the_wire({"base_model": "B", "dataset": "arc", "peft_method": name, "lora": sent}).adapter
    assert {k: (v, type(v)) for k, v in sent.items()} == {k: (getattr(got, k), type(getattr(got, k))) for k in sent}
    assert all(p.cli_flag in _train_flags() for p in method.params())                 # its flags
    assert f"| `{name}`" in DOCS.read_text(), f"docs/TRAINER.md has no row for {name}"  # the docs
    spec = {"base_model": "Qwen3-0.6B-base", "dataset": "arc", "peft_method": name}
    cfg = TrainConfig.resolve(spec, "cpu")                                            # the door
    assert f"_SFT_{method.tag}" in cfg.output_name                                    # the name
    est = memory.estimate_training_memory(memory.model_config_for(cfg.base_model), cfg)
    assert 0 < est["trainable_params"] <= est["total_params"]                         # the estimate
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg                                # serialisation
    rank = cfg.adapter.r if cfg.adapter else None
    assert rank is None or cfg.run_key() != TrainConfig.resolve({**spec, "lora": {"r": rank + 1}}, "cpu").run_key()


def test_a_method_declaring_a_shared_field_differently_is_refused():
    from dataclasses import dataclass

    from services.common.contract.params import option
    from services.trainer.peft import AdapterOptions

    @dataclass(frozen=True)
    class Other(AdapterOptions):
        r: int = option(16, "adapter rank", lo=1, hi=64, flag="--r")
    with pytest.raises(ValueError, match="declares lora.r again"):
        register_peft_method(PeftMethod("other", "Other", "x", Other, build=lambda *a: None,
                                        trainable=lambda *a: (0, 0)))
    assert "other" not in PEFT_METHODS


def test_a_plugins_spec_problems_are_the_specs_own():
    """A method's impossible settings (PiSSA or full fine-tuning on a bitsandbytes base, PiSSA under
    DDP) are INVALID_ARGUMENT at TrainSpec validation (no storage, no device): listed with the spec's
    other problems, so the dry run, the flow, the CLI and the door all refuse them the same way."""
    from services.common.contract.errors import ValidationError
    base = {"base_model": "Qwen3-0.6B-base", "dataset": "arc"}
    for spec, fragment in (({"peft_method": "pissa", "training_quant": "qlora"}, "needs the base's float weights"),
                           ({"peft_method": "pissa", "training_quant": "int8"}, "needs the base's float weights"),
                           ({"peft_method": "pissa", "world_size": 2}, "world_size 1"),
                           ({"peft_method": "none", "training_quant": "int8"}, "full fine-tuning cannot")):
        with pytest.raises(ValidationError, match=fragment):
            TrainConfig.resolve({**base, **spec}, "cuda")
    with pytest.raises(ValidationError) as exc:  # all at once, with the spec's other problems
        TrainConfig.resolve({**base, "peft_method": "pissa", "training_quant": "qlora", "world_size": 2,
                             "learning_rate": 5}, "cpu")
    assert len(exc.value.problems) == 3, exc.value.problems
    with pytest.raises(ValidationError) as exc:  # a value of the wrong type is listed, never a TypeError in a hook
        TrainConfig.resolve({**base, "peft_method": "pissa", "training_quant": "int8", "world_size": "two"}, "cpu")
    assert "world_size: 'two' must be in [1, 64]" in exc.value.problems[0] and len(exc.value.problems) == 2
    for ok in ({"peft_method": "pissa"}, {"peft_method": "lora", "training_quant": "qlora"}):
        TrainConfig.resolve({**base, **ok}, "cuda")


def test_the_options_map_is_strict_at_the_door():
    from services.common.contract.errors import ValidationError
    from services.common.rpc.job_servicer import spec_to_dict
    spec = {"base_model": "B", "dataset": "arc", "peft_method": "lora"}
    with pytest.raises(ValidationError) as exc:  # one answer: an unknown key, a non-integer rank, another method's
        _through_the_wire({**spec, "lora": {"r": 8.5, "bogus": 1, "d_initial": 0.2}})
    text = str(exc.value)
    assert "lora.bogus: unknown field" in text and "lora.r: 8.5 must be an integer" in text
    assert "lora.d_initial: lora takes no d_initial" in text
    # a client built against the typed LoraConfig (field 6, r = 16) is refused, not silently ignored
    old = train_spec_pb2.TrainSpec.FromString(bytes([0x32, 0x02, 0x08, 0x10]))
    with pytest.raises(ValidationError, match="#6: not a field of TrainSpec"):
        spec_to_dict(old)
