"""Task types as plugins: one module per type in this package (``mcq4.py``, ``squad_v2.py``,
``math_numeric.py``, ``boolq.py``), each defining one ``TaskType`` subclass; tasks themselves are
YAML files over these types (``services/common/data/task_defs/``). A new type is one new module here;
a new task of an existing type is one YAML file.

``get_type(name)`` / ``all_types()`` are the registry: every module of the package is imported on
first use and each ``TaskType`` subclass it defines is registered under its ``name``.
"""
from __future__ import annotations

import importlib
import pkgutil

from services.common.contract.errors import ValidationError
from services.common.data.task_types.base import TaskType

_TYPES: dict[str, TaskType] | None = None


def _load() -> dict[str, TaskType]:
    global _TYPES
    if _TYPES is None:
        found: dict[str, TaskType] = {}
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
            if info.name == "base":
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            for obj in vars(module).values():
                if isinstance(obj, type) and issubclass(obj, TaskType) and obj is not TaskType \
                        and obj.__module__ == module.__name__:
                    if obj.name in found:
                        raise ValidationError(f"task type {obj.name!r} is defined twice ({module.__name__})")
                    found[obj.name] = obj()
        _TYPES = found
    return _TYPES


def all_types() -> list[TaskType]:
    return [t for _, t in sorted(_load().items())]


def type_names() -> list[str]:
    return sorted(_load())


def get_type(name: str | TaskType) -> TaskType:
    """A task type by name; unknown names list the known ones."""
    if isinstance(name, TaskType):
        return name
    try:
        return _load()[str(name)]
    except KeyError:
        raise ValidationError(f"unknown task type {name!r} (known: {', '.join(type_names())})") from None


__all__ = ["TaskType", "all_types", "get_type", "type_names"]
