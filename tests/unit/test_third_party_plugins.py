"""A new PEFT method and a new PTQ method are one file each: two plugin modules outside the
repository, registered the way a third party registers them (an installed distribution naming them
under the ``ftlab.peft`` / ``ftlab.ptq`` entry-point groups), appear in every table the CLI, the
door, the wire (proto), the model names, the memory estimate and the flows' plan and report labels
need, with no file of ftlab edited. Runs in a fresh interpreter: the registries and the tables
derived from them are built at import, as in a service."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PEFT_PLUGIN = '''
"""Scaled LoRA: LoRA whose alpha is acme_scale x r (a new option, a new name tag)."""
from dataclasses import dataclass, replace

from services.common.contract.params import option
from services.trainer.peft import PeftMethod, register_peft_method
from services.trainer.peft.lora import LoraOptions, lora_config, lora_params


@dataclass(frozen=True)
class ScaledOptions(LoraOptions):
    acme_scale: float = option(2.0, "Acme: alpha over r", lo=0.5, hi=64, flag="--acme-scale")


def build(a, targets, seed):
    return lora_config(replace(a, alpha=int(a.acme_scale * a.r)), targets)


register_peft_method(PeftMethod("scaled_lora", "AcmeLoRa", "LoRA with alpha = acme_scale x r", ScaledOptions,
                                build=build, trainable=lora_params))
'''

PTQ_PLUGIN = '''
"""Acme int6: round-to-nearest int6 grouped weights (llm-compressor), the study's style of name."""
from dataclasses import dataclass

from services.common.contract.naming import quant_method
from services.quantizer.ptq import PtqMethod, group_size, register_ptq_method


@dataclass(frozen=True)
class Int6Options:
    group_size: int = group_size(32)


def recipe(cfg):
    from llmcompressor.modifiers.quantization import QuantizationModifier

    from services.quantizer.oneshot import weights
    return [QuantizationModifier(config_groups=weights(6, cfg.options["group_size"]), ignore=["lm_head"])]


def quantize(*args):
    from services.quantizer.oneshot import quantizer
    quantizer(recipe)(*args)


register_ptq_method(PtqMethod(
    "acme_w6", "llm-compressor", (6,), 16, {"rtn": quant_method("AcmeQ", aliases=("acme-quant",))}, Int6Options,
    study_tag=True, summary="int6 grouped weights by round-to-nearest", quantize=quantize,
    output_format="compressed-tensors"))
'''

CHECKS = '''
import argparse

import pytest
from google.protobuf import json_format

# naming first, in a process that has not imported the quantizer (as the evaluator): the plugin's name is known
from services.common.contract.naming import QuantMethod, parse_tag, with_kv_bits
assert with_kv_bits("AcmeQ_w6_g32_headfp32", 4) == "AcmeQ_w6_g32_kv4_headfp32"
assert QuantMethod.from_any("acme_quant") == "AcmeQ"                                   # its alias, normalised

from ftlab.cli import build_parser, spec_from_args
from flows.dryrun import plan_rows
from flows.experiment import plan
from services.common.contract.errors import ValidationError
from services.common.generated.ftlab.v1 import quantize_spec_pb2, train_spec_pb2
from services.common.rpc.job_servicer import spec_to_dict
from services.quantizer.config import QUANTIZE_PARAMS, default_output_name, spec_problems
from services.trainer import memory
from services.trainer.config import ADAPTER_PARAMS, TRAIN_PARAMS, TrainConfig


def wire(message_cls, spec):
    """spec sent as binary proto by a client, read back by a door."""
    sent = json_format.ParseDict(spec, message_cls()).SerializeToString()
    return spec_to_dict(message_cls.FromString(sent))


sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
train_flags = {s: a for a in sub["train"]._actions for s in a.option_strings}
quant_flags = {s: a for a in sub["quantize"]._actions for s in a.option_strings}
assert "scaled_lora" in train_flags["--peft"].choices and "[0.5, 64]" in train_flags["--acme-scale"].help  # CLI
assert "acme_w6" in quant_flags["--method"].choices
assert "32 for acme_w6" in " ".join(quant_flags["--group-size"].help.split())

# the trainer: command line -> spec -> binary proto -> door -> config, name, run key, memory estimate
args = build_parser().parse_args(["train", "--base-model", "Qwen3-0.6B-base", "--dataset", "arc",
                                  "--peft", "scaled_lora", "--r", "16", "--acme-scale", "4"])
spec = spec_from_args(args, TRAIN_PARAMS + ADAPTER_PARAMS)
cfg = TrainConfig.resolve(wire(train_spec_pb2.TrainSpec, spec), "cpu")
assert (cfg.adapter.acme_scale, cfg.adapter.r, type(cfg.adapter.r)) == (4.0, 16, int)
assert cfg.output_name == "Qwen3-0.6B-arc_SFT_AcmeLoRa16_NoQuant", cfg.output_name          # the name
assert build_parser and TrainConfig.from_dict(cfg.to_dict()) == cfg                          # the job record
assert cfg.run_key() != TrainConfig.resolve({**spec, "lora": {"r": 16, "acme_scale": 8}}, "cpu").run_key()
assert cfg.method.build(cfg.adapter, ["q_proj"], 0).lora_alpha == 64                          # its builder
est = memory.estimate_training_memory(memory.model_config_for(cfg.base_model), cfg)
assert 0 < est["trainable_params"] < est["total_params"]                                      # the estimate
for bad, fragment in (({"acme_scale": 100}, "lora.acme_scale: 100.0 must be in [0.5, 64]"),
                      ({"acme_scale": 2, "peft": "x"}, "lora.peft: unknown field")):
    with pytest.raises(ValidationError, match=fragment.replace("[", "\\\\[")):               # the strict door
        TrainConfig.resolve(wire(train_spec_pb2.TrainSpec, {**spec, "lora": bad}), "cpu")
with pytest.raises(ValidationError, match="lora.acme_scale: lora takes no acme_scale"):
    TrainConfig.resolve({**spec, "peft_method": "lora"}, "cpu")

# the quantizer: command line -> spec -> binary proto -> door, the study-style name parsed back
args = build_parser().parse_args(["quantize", "--source-model", "M", "--method", "acme_w6", "--dataset", "arc"])
qspec = wire(quantize_spec_pb2.QuantizeSpec, spec_from_args(args, QUANTIZE_PARAMS))
assert spec_problems(qspec) == []                                                             # the door
assert "weights_bits: 4 is not supported by acme_w6" in " ".join(spec_problems({**qspec, "weights_bits": 4}))
name = default_output_name(qspec, gpu=False)
assert name == "M_AcmeQ_w6_g32_headfp32", name                                                # the name
assert parse_tag(name.removeprefix("M_")).method == QuantMethod.from_any("acmeq")

# the flows: an experiment sweeping the rank of the new method and quantizing with the new method plans, with
# the labels the report groups by (the rank sweep) and the dry run's memory column
exp = plan({"name": "t", "base_models": ["Qwen3-0.6B-base"], "datasets": ["arc"],
            "train": [{"peft_method": "scaled_lora", "lora": {"r": [8, 16], "acme_scale": 4}}],
            "quantize": [{"methods": ["acme_w6"], "sources": ["trained"]}],
            "evaluate": {"tasks": [{"task": "ai2_arc", "limit": 4}]}})
outputs = {s.output: s for s in exp.steps}
assert {"Qwen3-0.6B-arc_SFT_AcmeLoRa8_NoQuant", "Qwen3-0.6B-arc_SFT_AcmeLoRa16_AcmeQ_w6_g32_headfp32"} <= \\
    set(outputs), sorted(outputs)
trains = [s for s in exp.steps if s.stage == "train"]
assert [(s.spec["lora"]["acme_scale"], s.labels.get("rank")) for s in trains] == [(4, 8), (4, 16)], \\
    [s.labels for s in trains]
assert {s.labels["ptq_method"] for s in exp.steps if s.stage == "quantize"} == {"acme_w6"}
rows = plan_rows(exp, None)
assert all(r["memory"] for r in rows if r["stage"] == "train"), rows
print("ALL-TABLES-OK")
'''


def _install(tmp_path: Path) -> Path:
    """The plugins as an installed distribution would put them on sys.path: the package and its
    dist-info with the entry points."""
    pkg = tmp_path / "acme_ftlab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "scaled_lora.py").write_text(textwrap.dedent(PEFT_PLUGIN))
    (pkg / "int6.py").write_text(textwrap.dedent(PTQ_PLUGIN))
    info = tmp_path / "acme_ftlab-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-ftlab\nVersion: 0.1\n")
    # both forms an entry point takes: ``module:attr`` (the usual one) and a bare module
    (info / "entry_points.txt").write_text("[ftlab.peft]\nscaled = acme_ftlab.scaled_lora:build\n\n"
                                           "[ftlab.ptq]\nint6 = acme_ftlab.int6\n")
    return tmp_path


def _run(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "FTLAB_DEVICE": "cpu"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)


def test_two_plugin_files_reach_every_table_with_no_ftlab_file_edited(tmp_path):
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    out = _run(_install(tmp_path), CHECKS)
    assert out.returncode == 0 and "ALL-TABLES-OK" in out.stdout, out.stdout[-3000:] + out.stderr[-6000:]
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert before == after  # nothing of ftlab written or edited


def test_without_the_plugins_the_same_checks_fail(tmp_path):
    # the check can fail: without the distribution on the path the new names are unknown
    out = _run(tmp_path, CHECKS)
    assert out.returncode != 0 and "AcmeQ" in out.stderr


def test_a_broken_plugin_is_named_in_the_error(tmp_path):
    """A plugin whose import fails stops the process with its entry point and distribution named,
    not a bare traceback of somebody else's import."""
    _install(tmp_path)
    (tmp_path / "acme_ftlab" / "scaled_lora.py").write_text("import acme_cuda_kernels  # not installed\n")
    out = _run(tmp_path, "import services.trainer.peft")
    assert out.returncode != 0
    assert "ftlab plugin scaled = 'acme_ftlab.scaled_lora:build'" in out.stderr, out.stderr[-3000:]
    assert "acme-ftlab" in out.stderr and "acme_cuda_kernels" in out.stderr, out.stderr[-3000:]
