"""No default, range or choice is typed twice: the job schemas (option fields of the configs and
the method plugins) are the only place; the proto's comments say what a field is, never its values,
and the CLI's help is generated from the schema."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from ftlab.cli import build_parser, param_help
from services.evaluator.config import EVALUATE_PARAMS
from services.quantizer.config import QUANTIZE_PARAMS
from services.trainer.config import ADAPTER_PARAMS, TRAIN_PARAMS

PROTO = Path(__file__).resolve().parents[2] / "proto" / "ftlab" / "v1"
SCHEMAS = {"train_spec.proto": TRAIN_PARAMS + ADAPTER_PARAMS, "quantize_spec.proto": QUANTIZE_PARAMS,
           "evaluate_spec.proto": EVALUATE_PARAMS}
FIELD = re.compile(r"^\s*(?:optional |repeated )?\w+ (\w+) = \d+;\s*(?://(.*))?$")


def field_comments(text: str) -> dict[str, str]:
    """field name -> its comment (the trailing one and the block right above it)."""
    out, above = {}, []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("//"):
            above.append(stripped[2:])
            continue
        m = FIELD.match(line)
        if m:
            out[m.group(1)] = " ".join(above + [m.group(2) or ""])
        above = []
    return out


def _values(p) -> set[str]:
    """The literals a comment would repeat: the default, the range's ends, the choices."""
    vals = {str(v) for v in (p.default, p.lo, p.hi) if v not in (None, "", True, False) and not isinstance(v, list)}
    return vals | set(p.choices)


@pytest.mark.parametrize("proto", SCHEMAS)
def test_proto_comments_never_repeat_a_default_a_range_or_the_choices(proto):
    comments = field_comments((PROTO / proto).read_text())
    bad = []
    for p in SCHEMAS[proto]:
        text = comments.get(p.key, "")
        if re.search(r"\bdefault\b|\|| in [\[(]", text):
            bad.append(f"{p.name}: {text.strip()!r} states a default, range or choice list")
        bad += [f"{p.name}: {text.strip()!r} repeats {v!r}" for v in _values(p)
                if re.search(rf"(?<![\w.]){re.escape(v)}(?![\w.])", text)]
    assert not bad, "typed twice (say it in the schema only):\n" + "\n".join(bad)


def test_the_checker_sees_a_repeated_default():
    comments = field_comments('message M {\n  optional int32 r = 1;  // default 8\n  // "auto" | "fp32"\n'
                              '  string dtype = 2;\n}\n')
    assert "default 8" in comments["r"] and "|" in comments["dtype"]


@pytest.mark.parametrize("command,params", [("train", TRAIN_PARAMS + ADAPTER_PARAMS), ("quantize", QUANTIZE_PARAMS),
                                            ("eval", EVALUATE_PARAMS)])
def test_cli_help_is_the_schema(command, params):
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices[command]
    helps = {s: a for a in sub._actions for s in a.option_strings}
    for p in params:
        action = helps[p.cli_flag]
        assert param_help(p).split(" (default")[0].split(", in ")[0] in action.help \
            or p.name == "tasks.task", p.name  # --task lists the task registry instead
        if p.default not in (None, "") and not isinstance(p.default, bool):
            assert "(default: " in action.help, p.name
        if p.choices:
            assert tuple(action.choices) == p.choices, p.name
        if p.lo is not None:
            assert p.range_text() in action.help, p.name
