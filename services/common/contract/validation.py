"""Collect every problem of a request, then raise once: INVALID_ARGUMENT (the caller's request is
wrong) wins over NOT_FOUND and FAILED_PRECONDITION (stored content is missing or wrong: never the
caller's INVALID_ARGUMENT on its own), and lists them too."""
from __future__ import annotations

import re

from services.common.contract.errors import NotFoundError, PreconditionError, ValidationError, quote


class Problems:
    def __init__(self) -> None:
        self.invalid: list[str] = []
        self.missing: list[str] = []
        self.blocked: list[str] = []   # stored content that is wrong (a dataset without the task's columns)

    def require(self, ok: bool, message: str) -> bool:
        if not ok:
            self.invalid.append(message)
        return ok

    def add(self, messages: list[str]) -> None:
        self.invalid.extend(messages)

    def not_found(self, message: str) -> None:
        self.missing.append(message)

    def stored(self, message: str) -> None:
        """What storage holds is wrong for this request: FAILED_PRECONDITION."""
        self.blocked.append(message)

    def raise_if_any(self) -> None:
        if self.invalid:
            raise ValidationError(self.invalid + self.missing + self.blocked)
        if self.missing:
            raise NotFoundError("; ".join(self.missing + self.blocked))
        if self.blocked:
            raise PreconditionError("; ".join(self.blocked))


MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def check_module_names(p: Problems, field: str, names: list[str], max_items: int = 64) -> None:
    """Module names (peft ``target_modules``): dotted Python identifiers of at most 128
    characters each, no duplicates, at most ``max_items``; ``all-linear`` (peft's shorthand)
    is the one other name allowed, and stands alone."""
    p.require(len(names) <= max_items, f"{field}: at most {max_items} names (got {len(names)})")
    for i, name in enumerate(names[:max_items]):
        if name != "all-linear" and not (len(name) <= 128 and MODULE_RE.match(name)):
            p.invalid.append(f"{field}[{i}]: {quote(name)} is not a module name (a dotted Python "
                             "identifier of at most 128 characters, e.g. q_proj or mlp.down_proj)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    p.require(not dupes, f"{field}: each name at most once (repeated: {quote(dupes)})")
    if "all-linear" in names and len(names) > 1:
        p.invalid.append(f"{field}: 'all-linear' stands alone")


# --- checks that compare a request with what storage holds (the child could only fail on these)

LIST_COMMANDS = {"models": "ftlab model list", "datasets": "ftlab data list"}


def held(store, bucket: str, limit: int = 10) -> str:
    """What ``bucket`` holds, for a not-found message: `` (it holds: a, b; ftlab model list)``,
    the first ``limit`` names; `` (it is empty)``; "" when storage cannot say."""
    from services.common.storage import artifacts
    from services.common.contract.errors import FtlabError
    try:
        names = [n for n in artifacts.list_committed(store, bucket) if "/" not in n]
    except FtlabError:
        return ""
    if not names:
        return " (it is empty)"
    more = f", … {len(names) - limit} more" if len(names) > limit else ""
    return f" (it holds: {', '.join(names[:limit])}{more}; {LIST_COMMANDS.get(bucket, 'ftlab ' + bucket + ' list')})"


def task_mismatch(where: str, requested: str, dataset: str, manifest: dict) -> list[str]:
    """The requested task against the task the dataset was imported for (its manifest's ``task``):
    a dataset of one task cannot train or evaluate another (its gold answers have another format)."""
    from services.common.data.tasks import get_task
    held = manifest.get("task") or ""
    try:
        if not held or get_task(held).name == get_task(requested).name:
            return []
    except ValidationError:
        return []  # an unknown task is reported by the caller's own check
    return [f"{where}: task {get_task(requested).name!r} requested but dataset {quote(dataset)} holds "
            f"{get_task(held).name!r} items (its manifest); use a {get_task(requested).name} dataset, "
            f"or task {get_task(held).name!r}"]


def split_rows(where: str, dataset: str, manifest: dict, split: str, limit: int | None) -> list[str]:
    """An empty split, or a limit larger than the split (the child would quietly use fewer rows)."""
    rows = manifest.get("splits", {}).get(split, {}).get("rows")
    if not isinstance(rows, int):
        return []  # a manifest without row counts: nothing to compare
    if rows == 0:
        return [f"{where}: dataset {quote(dataset)} split {quote(split)} has no rows"]
    if limit and limit > rows:
        return [f"{where}: limit {limit} but dataset {quote(dataset)} split {quote(split)} has only {rows} rows"]
    return []


def model_weights_problem(field: str, name: str, manifest: dict, purpose: str) -> str | None:
    """A model that holds no full weights (an adapter, or no config.json) or quantized weights,
    where ``purpose`` needs a full-precision model (training a base, for instance)."""
    files = {f.get("path") for f in manifest.get("files", [])}
    if manifest.get("kind") == "quantized":
        return (f"{field}: {quote(name)} is quantized ({manifest.get('quantization', {}).get('quant_tag', '?')}); "
                f"{purpose} needs a full-precision model: use its source")
    if "config.json" not in files:
        what = "an adapter without its base weights" if manifest.get("adapter_path") else "not a model folder"
        return (f"{field}: {quote(name)} is {what} (no config.json); {purpose} needs full weights: "
                "use a merged model (merge_after_train) or its base")
    return None


# --- strict fields (as Kubernetes' strict field validation): what this server does not know is refused

def unknown_proto_fields(message, prefix: str = "") -> list[str]:
    """Fields ``message`` carries that this server's proto does not define (a newer client's
    setting: ignored, it would run a different experiment than asked), as problems naming their
    path and field number; every sub-message is searched."""
    from google.protobuf import unknown_fields
    out = []
    for f in unknown_fields.UnknownFieldSet(message):
        known = message.DESCRIPTOR.fields_by_number.get(f.field_number)
        if known is not None:  # protobuf keeps a field sent with another wire type as unknown
            out.append(f"{prefix}{known.name}: wrong wire type (#{f.field_number} is not encoded as this "
                       "server's field)")
        else:
            out.append(f"{prefix}#{f.field_number}: not a field of {message.DESCRIPTOR.name} on this server (a "
                       "newer client's setting would be silently ignored; upgrade the server or leave it out)")
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            values = list(value) if field.is_repeated else [value]
            for i, v in enumerate(values):
                where = f"{prefix}{field.name}[{i}]." if field.is_repeated else f"{prefix}{field.name}."
                out += unknown_proto_fields(v, where)
    return out


def unknown_keys(spec: dict, names, prefix: str = "") -> list[str]:
    """Keys of a spec given as data (YAML, JSON) that are no field of it: ``names`` are its fields'
    dotted paths (``lora.r``; a list of sub-messages, ``tasks.task``, is checked item by item)."""
    names = set(names)
    tops = {n.split(".", 1)[0] for n in names}
    out = []
    for key, value in spec.items():
        if key not in tops:
            out.append(f"{prefix}{key}: unknown field (known: {', '.join(sorted(tops))})")
            continue
        subs = {n.split(".", 1)[1] for n in names if n.startswith(f"{key}.")}
        if subs:
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    where = f"{prefix}{key}[{i}]." if isinstance(value, list) else f"{prefix}{key}."
                    out += unknown_keys(item, subs, where)
    return out
