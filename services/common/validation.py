"""Collect every problem of a request, then raise once (INVALID_ARGUMENT wins over NOT_FOUND,
and lists the not-found problems too)."""
from __future__ import annotations

from services.common.errors import NotFoundError, ValidationError


class Problems:
    def __init__(self) -> None:
        self.invalid: list[str] = []
        self.missing: list[str] = []

    def require(self, ok: bool, message: str) -> bool:
        if not ok:
            self.invalid.append(message)
        return ok

    def add(self, messages: list[str]) -> None:
        self.invalid.extend(messages)

    def not_found(self, message: str) -> None:
        self.missing.append(message)

    def raise_if_any(self) -> None:
        if self.invalid:
            raise ValidationError(self.invalid + self.missing)
        if self.missing:
            raise NotFoundError("; ".join(self.missing))


def in_range(p: Problems, spec: dict, field: str, default, lo, hi, lo_open: bool = False):
    """``spec[field]`` (proto JSON; absent = default) checked against [lo, hi] (or (lo, hi])."""
    value = spec.get(field, default)
    ok = (lo < value if lo_open else lo <= value) and value <= hi
    p.require(ok, f"{field}: {value!r} must be in {'(' if lo_open else '['}{lo}, {hi}]")
    return value
