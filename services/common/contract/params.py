"""One spec field described once: its default, range or choices and help. A job config or a
method's options are dataclasses whose fields are declared with :func:`option` (the field's
metadata carries its :class:`Param`); :func:`params_of` lists them. The doors check a spec with
these, the CLI builds its flags and help text from them and a test compares them with the proto,
so a default or a range is never typed twice. Torch-free."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from services.common.contract.errors import quote
from services.common.contract.validation import Problems


@dataclass(frozen=True)
class Param:
    """A spec field. ``name`` is its path in the spec (``lora.r`` inside a sub-message);
    ``default`` None: required (``required``) or derived (``help`` says how)."""
    name: str
    default: Any
    help: str
    kind: type = str                  # int | float | bool | str | list (the CLI's type)
    lo: float | None = None           # numeric range [lo, hi]; lo_open/hi_open: ( or )
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    flag: str = ""                    # the CLI flag, when not --<name> with '-' for '_' and '.'
    required: bool = False            # the spec must give it (a required CLI flag)

    @property
    def key(self) -> str:
        """The field's key in its (sub-)message."""
        return self.name.rsplit(".", 1)[-1]

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace(".", "-").replace("_", "-")

    @property
    def dest(self) -> str:
        """argparse's attribute for the flag."""
        return self.cli_flag[2:].replace("-", "_")

    def range_text(self) -> str:
        def num(v: float) -> str:  # 1.0 -> '1', 1e4 -> '10000', 0.5 -> '0.5'
            return str(int(v)) if float(v).is_integer() else str(v)
        return f"{'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"

    def read(self, p: Problems, spec: dict[str, Any]) -> Any:
        """The field's value in ``spec`` (the field's own message; absent, or empty for a choice: the
        default), checked against the range or the choices; a problem is added to ``p``."""
        if self.choices:
            value = spec.get(self.key) or self.default
            p.require(value in self.choices, f"{self.name}: unknown {quote(value)}; known: {', '.join(self.choices)}")
            return value
        value = spec.get(self.key, self.default)
        if value is None and self.key not in spec:  # derived: the config fills it in
            return None
        if self.kind is bool:
            p.require(isinstance(value, bool), f"{self.name}: {quote(value)} must be true or false")
        if self.lo is not None:
            if self.kind is int and isinstance(value, float) and value.is_integer():
                value = int(value)  # a generic map (google.protobuf.Struct) carries every number as a double
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and (self.lo < value if self.lo_open else self.lo <= value) and (value < self.hi if self.hi_open else value <= self.hi))
            p.require(ok, f"{self.name}: {quote(value)} must be in {self.range_text()}")
            p.require(not ok or self.kind is not int or isinstance(value, int),
                      f"{self.name}: {quote(value)} must be an integer")
        return value


# --- the dataclass-field idiom: a typed options class declares each field once, with its Param

_PARAM = "ftlab.param"


def option(default: Any = dataclasses.MISSING, help: str = "", *, kind: type | None = None, lo: float | None = None,
           hi: float | None = None, lo_open: bool = False, hi_open: bool = False, choices: tuple[str, ...] = (),
           flag: str = "", required: bool = False) -> Any:
    """A dataclass field that is a spec field: its default (omitted: ``required``), range or
    choices and help live here and nowhere else; :func:`params_of` turns it into its
    :class:`Param` (the CLI flag, the door's check, the proto comparison). ``kind`` defaults to the
    default's type; a list default is copied per instance."""
    if kind is None:
        kind = type(default) if default not in (dataclasses.MISSING, None) else str
    meta = {_PARAM: {"help": help, "kind": kind, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
                     "choices": tuple(choices), "flag": flag, "required": required}}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def params_of(cls: type, prefix: str = "") -> tuple[Param, ...]:
    """The :class:`Param` of every :func:`option` field of the dataclass ``cls``, in field order,
    named ``prefix + field`` (``lora.`` for a sub-message). Other fields (what the door fills in)
    are not spec fields and are left out."""
    out = []
    for f in dataclasses.fields(cls):
        if _PARAM not in f.metadata:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append(Param(prefix + f.name, default, **f.metadata[_PARAM]))
    return tuple(out)
