"""Domain errors. Services raise these; one gRPC interceptor maps them to status codes."""
from __future__ import annotations


class FtlabError(Exception):
    """Base class of every error ftlab reports to a caller."""


class ValidationError(FtlabError):
    """A request is malformed. Carries every problem found, not just the first."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class NotFoundError(FtlabError):
    """A named job, model, dataset or object does not exist (or has no manifest)."""


class PreconditionError(FtlabError):
    """The request is well-formed but cannot run in the current state of the system."""


class StorageError(FtlabError):
    """The object store failed or is unreachable."""
