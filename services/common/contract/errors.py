"""Domain errors. Services raise these; one gRPC interceptor maps them to status codes.

Error texts travel as gRPC metadata (8 KiB soft, 16 KiB hard limit): a text that repeats a huge
bad value would turn INVALID_ARGUMENT into RESOURCE_EXHAUSTED. So checks quote values with
:func:`quote` (a short escaped prefix), every problem is capped at ``MAX_PROBLEM_CHARS`` and a
whole reply at ``MAX_ERROR_CHARS`` (:func:`shorten`: head and tail kept, the cut counted)."""
from __future__ import annotations

MAX_ERROR_CHARS = 2000    # an error reply's text at most (<= 8 KB of UTF-8: gRPC metadata)
MAX_PROBLEM_CHARS = 1000  # one problem's text at most
QUOTE_CHARS = 40          # how much of a bad value an error text repeats


class FtlabError(Exception):
    """Base class of every error ftlab reports to a caller."""


class ValidationError(FtlabError):
    """A request is malformed. Carries every problem found, not just the first (each capped)."""

    def __init__(self, problems: list[str] | str):
        problems = [problems] if isinstance(problems, str) else list(problems)
        self.problems = [shorten(p, MAX_PROBLEM_CHARS) for p in problems]
        super().__init__("; ".join(self.problems))


class NotFoundError(FtlabError):
    """A named job, model, dataset or object does not exist (or has no manifest)."""


class PreconditionError(FtlabError):
    """The request is well-formed but cannot run in the current state of the system."""


class StorageError(FtlabError):
    """The object store failed or is unreachable."""


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``value`` as an error text may show it: ``repr`` of at most ``limit`` characters (control
    characters escaped), plus how long it really was when cut: ``'xxxx…' (20000 chars)``."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} chars)"
    text = repr(value)
    return text if len(text) <= limit + 2 else f"{text[:limit]}… ({len(text)} chars)"


def shorten(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Keep the head and the tail of a long text and say how much was cut between them."""
    if len(text) <= limit:
        return text
    marker = " … [{} characters cut] … "
    keep = limit - len(marker.format(len(text)))
    head, tail = keep * 2 // 3, keep - keep * 2 // 3
    return text[:head] + marker.format(len(text) - head - tail) + text[len(text) - tail:]
