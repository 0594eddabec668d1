"""Every registered PTQ method reaches every table that needs it: the CLI's --method choices and
option flags, the proto's QuantizeSpec (every option field), the study's model name (a tag
parse_tag reads back), the flows' METHODS map and the docs' method table."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ftlab.cli import build_parser
from services.common.generated.ftlab.v1 import quantize_spec_pb2
from services.common.contract.naming import parse_tag
from services.common.contract.params import params_of
from services.quantizer.config import METHODS, default_output_name, spec_problems
from services.quantizer.ptq import PTQ_METHODS, PtqMethod, group_size, register_ptq_method

DOCS = Path(__file__).resolve().parents[2] / "docs" / "QUANTIZER.md"


def _flags() -> dict[str, argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["quantize"]
    return {s: a for a in sub._actions for s in a.option_strings}


@pytest.mark.parametrize("name", PTQ_METHODS)
def test_a_registered_method_is_in_every_table(name):
    method = PTQ_METHODS[name]
    assert name in _flags()["--method"].choices and name in METHODS                     # CLI, flows
    proto = {f.name for f in quantize_spec_pb2.QuantizeSpec.DESCRIPTOR.fields}
    assert method.options <= proto, method.options - proto                                # proto
    assert all(p.cli_flag in _flags() for p in params_of(method.options_cls))            # flags
    assert f"| `{name}` |" in DOCS.read_text(), f"docs/QUANTIZER.md has no row for {name}"  # docs
    if method.unavailable:
        return
    assert method.output_format and method.quantize is not None                          # loader/format
    spec = {"source_model": "Qwen3-4B-base", "method": name, "dataset": "arc"}
    assert spec_problems(spec) == []                                                      # door
    for gpu in (True, False):
        out = default_output_name(spec, gpu=gpu)
        assert out.startswith("Qwen3-4B-base_") and parse_tag(out.removeprefix("Qwen3-4B-base_"))  # name


def test_a_shared_option_declared_differently_is_refused():
    from dataclasses import dataclass

    from services.common.contract.params import option

    @dataclass(frozen=True)
    class Wide:
        group_size: int = option(64, "weights per scale", lo=1, hi=16)
    with pytest.raises(ValueError, match="declares group_size differently"):
        register_ptq_method(PtqMethod("wide", "x", (4,), 16, {}, Wide, quantize=lambda *a: None))
    assert "wide" not in PTQ_METHODS

    @dataclass(frozen=True)
    class Same:
        group_size: int = group_size(32)  # the shared declaration, another default: fine
    assert params_of(Same)[0].default == 32
