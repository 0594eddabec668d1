"""Loading a third party's plugins: every entry point of a group (``ftlab.peft``, ``ftlab.ptq``),
whose module registers its method on import, as ours do. Both forms an entry point takes work
(``acme = "acme_ftlab.olora"`` and ``acme = "acme_ftlab.olora:METHOD"``); a plugin that fails to
load stops the process with a message naming the entry point and its distribution, since running
on without a method a plan names would be a wrong experiment."""
from __future__ import annotations

from importlib.metadata import entry_points


class PluginError(RuntimeError):
    """A plugin's entry point that could not be loaded (import error, clash with a registered name)."""


def load_group(group: str) -> None:
    for entry in entry_points(group=group):
        try:
            entry.load()  # imports the module (and resolves ``:attr``): the module registers itself
        except Exception as exc:  # noqa: BLE001 - any failure of a third party's code, named
            dist = getattr(entry.dist, "name", None) or "an unknown distribution"
            raise PluginError(f"ftlab plugin {entry.name} = {entry.value!r} (entry point group {group!r}, "
                              f"from {dist}) failed to load: {type(exc).__name__}: {exc}; fix or uninstall "
                              f"that distribution (pip uninstall {dist})") from exc
