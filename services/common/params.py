"""One spec field described once: its default, range or choices and help. The job configs
(services/<service>/config.py) check a spec with these, and the CLI builds its flags and help
text from the same objects, so a default or a range is never typed twice. Torch-free."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.common.errors import quote
from services.common.validation import Problems


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
        return f"{'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"

    def read(self, p: Problems, spec: dict[str, Any]) -> Any:
        """The field's value in ``spec`` (the field's own message; absent, or empty for a choice: the
        default), checked against the range or the choices; a problem is added to ``p``."""
        if self.choices:
            value = spec.get(self.key) or self.default
            p.require(value in self.choices, f"{self.name}: unknown {quote(value)}; known: {', '.join(self.choices)}")
            return value
        value = spec.get(self.key, self.default)
        if self.lo is not None:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and (self.lo < value if self.lo_open else self.lo <= value) and (value < self.hi if self.hi_open else value <= self.hi))
            p.require(ok, f"{self.name}: {quote(value)} must be in {self.range_text()}")
        return value
