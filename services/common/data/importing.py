"""Data import: a task's train/test splits from a source into the ``datasets`` bucket, in the
canonical schema of its task type (``TaskType.columns``), committed with a manifest.

Sources:
  seed  a folder with the study's ``train-<seed_stem>.parquet`` / ``test-<seed_stem>.parquet``
  hf    a folder with ``<hf_stem>-train.jsonl`` / ``<hf_stem>-test.jsonl`` in Hugging Face schema
  hub   ``datasets.load_dataset`` from the Hugging Face hub (online hosts), seeded sampling
Seed and hf rows are kept as they are (they already are the study's samples); a row that cannot be
put in canonical form is dropped, and every import reports what it kept and what it dropped with the
reason per kind (``DROP_REASONS``), in its return value and in the dataset manifest; ``strict=True``
turns any drop into an error that writes nothing. SQuAD v2 rows keep every gold answer (``answers``).
Data is read from the source at run time, never copied into the repository.
"""
from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from services.common.data import tasks as T
from services.common.storage.artifacts import commit_dir, read_file, read_manifest, require_manifest, sha256_file
from services.common.contract.errors import NotFoundError, PreconditionError, ValidationError
from services.common.storage.parquet_io import frame_from_parquet_bytes
from services.common.storage.store import ObjectStore, make_uri
# Why a source record did not become a dataset row (the manifest counts each kind); raised by the
# task types' converters.
from services.common.data.task_types.base import (DROP_REASONS, DUPLICATE_ID, INVALID_GOLD, MISSING_FIELD,  # noqa: F401
                                             NON_NUMERIC_GOLD, UNUSABLE_GOLD, Dropped)

BUCKET = "datasets"
SCHEMA_VERSION = 1
SOURCES = ("seed", "hf", "hub")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_SPLIT_RE = re.compile(r"[a-z][a-z0-9_]*")


def validate_columns(task: str | T.TaskDef, df: pd.DataFrame) -> None:
    """Raise ValidationError naming every canonical column ``df`` lacks."""
    task = T.get_task(task)
    missing = [c for c in task.columns if c not in df.columns]
    if missing:
        raise ValidationError(f"task {task.name}: missing column(s) {missing}; "
                              f"a {task.type.name} dataset needs {list(task.columns)}")


# ---------------------------------------------------------------------------------------------
# One record (seed row or HF-schema record) → canonical row: the task type's ``import_row``

def _canonical(task: T.TaskDef, rec: Mapping[str, Any]) -> dict | None:
    rec = dict(rec)
    for hf_field, src_field in task.fields:  # a dataset whose field names differ from the HF schema
        if src_field in rec:
            rec[hf_field] = rec.pop(src_field)
    return task.type.import_row(task, rec)


def convert_records(task: T.TaskDef, records: Iterable[Mapping[str, Any]]) -> tuple[list[dict], Counter]:
    """Source records → canonical rows, in order, and a Counter of dropped records by reason
    (``DROP_REASONS``). A record whose source id repeats an earlier kept one is dropped."""
    rows, drops, seen = [], Counter(), set()
    for rec in records:
        try:
            row = _canonical(task, rec)
        except Dropped as d:
            drops[d.reason] += 1
            continue
        if row is None:
            drops[UNUSABLE_GOLD] += 1
            continue
        if row["id"]:
            if row["id"] in seen:
                drops[DUPLICATE_ID] += 1
                continue
            seen.add(row["id"])
        rows.append(row)
    return rows, drops


def _content_key(row: dict) -> str:
    return row.get("context", "") + "\x00" + row["question"]


def _frame(task: T.TaskDef, rows: list[dict]) -> pd.DataFrame:
    """Rows → canonical frame; rows without a source id get a content hash, and a repeated content
    (the same question twice in a pool) gets a suffix ("-2") so ids stay unique."""
    seen: dict[str, int] = defaultdict(int)
    for row in rows:
        base = row["id"] or f"{task.short}-{hashlib.sha1(_content_key(row).encode()).hexdigest()[:12]}"
        seen[base] += 1
        row["id"] = base if seen[base] == 1 else f"{base}-{seen[base]}"
    return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object if c == "answers" else "str")
                         for c in task.columns}, columns=list(task.columns))


# Fixed writer options: the same rows give the same bytes (and sha256) on every run.
_PARQUET_OPTIONS = dict(compression="snappy", version="2.6", data_page_version="1.0", use_dictionary=True,
                        write_statistics=True, store_schema=False, row_group_size=1 << 20)


def write_split(task: T.TaskDef, df: pd.DataFrame, path: str | Path) -> str:
    """Write one canonical split as parquet with fixed options; returns its sha256. String columns
    are plain strings, ``answers`` a list of strings; no pandas or arrow metadata is stored, so the
    bytes depend on the rows only."""
    arrays = {c: pa.array([list(v) for v in df[c]], pa.list_(pa.string())) if c == "answers"
              else pa.array(df[c].tolist(), pa.string()) for c in task.columns}
    pq.write_table(pa.table(arrays), path, **_PARQUET_OPTIONS)
    return sha256_file(path)


def drop_summary(split_info: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per split: 'train: kept 638 of 800; dropped 162 (non_numeric_gold 162)'."""
    lines = []
    for s, info in split_info.items():
        why = ", ".join(f"{k} {v}" for k, v in sorted(info.get("drops", {}).items()))
        lines.append(f"{s}: kept {info['rows']} of {info['read']}; dropped {info['dropped']}"
                     + (f" ({why})" if why else ""))
    return lines


# ---------------------------------------------------------------------------------------------
# Sources

def _source_file(task: T.TaskDef, source: str, path: Path, split: str) -> Path:
    if source == "seed":
        return path / f"{split}-{task.seed_stem}.parquet"
    return path / f"{task.hf_stem}-{split}.jsonl"


def _read_records(file: Path) -> list[dict]:
    if file.suffix == ".parquet":
        return pd.read_parquet(file).to_dict("records")
    with open(file, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _load_hub_split(task: T.TaskDef, hub_split: str):
    """One hub split as a ``datasets`` object (streamed for huge datasets). Tests replace this."""
    import datasets  # heavy; only the hub source needs it

    try:
        return datasets.load_dataset(task.hub_id, task.hub_config, split=hub_split,
                                     streaming=task.hub_streaming)
    except Exception as e:  # offline host, unknown split, network error...
        raise NotFoundError(f"cannot load {task.hub_id} ({task.hub_config or 'default'}) split "
                            f"{hub_split!r} from the Hugging Face hub: {e}") from e


def _seeded_order(ds: Any, seed: int) -> Iterator[Mapping[str, Any]]:
    """The split's records in a reproducible random order (a seeded permutation, or a seeded
    shuffle buffer for a streamed split)."""
    if hasattr(ds, "__len__") and hasattr(ds, "__getitem__"):
        for i in np.random.default_rng(seed).permutation(len(ds)):
            yield ds[int(i)]
    else:
        yield from ds.shuffle(seed=seed, buffer_size=10_000)


def _sample_hub(task: T.TaskDef, splits: list[str], sizes: dict[str, int],
                seed: int) -> dict[str, tuple[list, Counter, int]]:
    """Seeded samples per split. Our splits that share a hub split are drawn from one shuffled order,
    test first (so the test set does not depend on train_size), with no question in two splits."""
    hub_of = dict(task.hub_splits)
    groups: dict[str, list[str]] = defaultdict(list)
    for split in sorted(splits, key=lambda s: s == "train"):
        groups[hub_of[split]].append(split)
    out: dict[str, tuple[list, Counter, int]] = {}
    for hub_split, ours in groups.items():
        taken: dict[str, list[dict]] = {s: [] for s in ours}
        dropped = {s: Counter() for s in ours}  # records skipped while drawing that split, by reason
        read = {s: 0 for s in ours}
        used: set[str] = set()
        pending = list(ours)
        for rec in _seeded_order(_load_hub_split(task, hub_split), seed):
            if not pending:
                break
            read[pending[0]] += 1
            rows, drops = convert_records(task, [rec])
            if drops:
                dropped[pending[0]] += drops
                continue
            row = rows[0]
            if _content_key(row) in used:  # the same question again: not a new item, not a drop
                read[pending[0]] -= 1
                continue
            used.add(_content_key(row))
            taken[pending[0]].append(row)
            if len(taken[pending[0]]) >= sizes[pending[0]]:
                pending.pop(0)
        for s in ours:
            out[s] = (taken[s], dropped[s], read[s])
    return out


# ---------------------------------------------------------------------------------------------
# Import

def _check_request(task_name, source, path, splits, train_size, test_size, name) -> tuple[T.TaskDef | None, list[str]]:
    problems: list[str] = []
    task = None
    try:
        task = T.get_task(task_name)
    except ValidationError as e:
        problems.extend(e.problems)
    if source not in SOURCES:
        problems.append(f"unknown source {source!r} (known: {', '.join(SOURCES)})")
    if isinstance(splits, str) or not splits or len(set(splits)) != len(splits):
        problems.append(f"splits must be a non-empty list of distinct names, got {splits!r}")
        splits = ()
    for s in splits:
        if not isinstance(s, str) or not _SPLIT_RE.fullmatch(s):
            problems.append(f"split name {s!r} must match {_SPLIT_RE.pattern}")
    if name is not None and not (isinstance(name, str) and _NAME_RE.fullmatch(name)):
        problems.append(f"dataset name {name!r} must match {_NAME_RE.pattern}")
    if source in ("seed", "hf"):
        if path is None:
            problems.append(f"source {source!r} needs a path (a folder)")
        elif not Path(path).is_dir():
            problems.append(f"source path {path} is not a directory")
        if source == "seed" and task and not task.seed_stem:
            problems.append(f"task {task.name} has no seed_stem: it cannot be imported from a seed folder")
    if source == "hub":
        if path is not None:
            problems.append("source 'hub' takes no path")
        for label, size in (("train_size", train_size), ("test_size", test_size)):
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                problems.append(f"{label} must be a positive integer, got {size!r}")
        if task and not task.hub_id:
            problems.append(f"task {task.name} has no hub id: it cannot be imported from the hub")
        if task and task.hub_id:
            unknown = [s for s in splits if s not in dict(task.hub_splits)]
            if unknown:
                problems.append(f"task {task.name} maps no hub split for {unknown} "
                                f"(known: {sorted(dict(task.hub_splits))})")
    return task, problems


def import_dataset(store: ObjectStore, task: str | T.TaskDef, source: str, path: str | Path | None = None,
                   splits: Iterable[str] = ("train", "test"), seed: int = 0, train_size: int = 1000,
                   test_size: int = 200, name: str | None = None, overwrite: bool = False,
                   strict: bool = False) -> dict[str, Any]:
    """Import ``splits`` of ``task`` from ``source`` into ``datasets/{name or short}/{split}.parquet``
    and commit it; returns the manifest. Each split's entry says what was read, kept (``rows``) and
    dropped, with ``drops`` = {reason: count} (``DROP_REASONS``). ``strict``: any drop is a
    ValidationError. A rejected request writes nothing."""
    splits = list(splits) if not isinstance(splits, str) else splits
    taskdef, problems = _check_request(task, source, path, splits, train_size, test_size, name)
    if problems:
        raise ValidationError(problems)
    name = name or taskdef.short
    if read_manifest(store, BUCKET, name) is not None and not overwrite:
        raise PreconditionError(f"dataset {make_uri(BUCKET, name + '/')} already exists (--overwrite replaces it)")

    meta: dict[str, Any] = {}
    if source == "hub":
        sizes = {s: train_size if s == "train" else test_size for s in splits}
        sampled = _sample_hub(taskdef, splits, sizes, seed)
        meta = {"source_id": taskdef.hub_id, "hub_config": taskdef.hub_config, "seed": seed,
                "hub_splits": {s: dict(taskdef.hub_splits)[s] for s in splits}, "requested": sizes}
    else:
        root = Path(path).resolve()
        files = {s: _source_file(taskdef, source, root, s) for s in splits}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise NotFoundError(f"{source} source for {taskdef.name} lacks: {', '.join(missing)}")
        sampled = {}
        for s, f in files.items():
            records = _read_records(f)
            kept, drops = convert_records(taskdef, records)
            sampled[s] = (kept, drops, len(records))
        meta = {"source_path": str(root), "source_files": {s: f.name for s, f in files.items()}}

    problems = [f"{s}: dropped {sum(d.values())} of {n} record(s): "
                + ", ".join(f"{k} {v}" for k, v in sorted(d.items()))
                for s, (_, d, n) in sampled.items() if strict and d]
    problems += [f"no usable {taskdef.name} rows for split {s!r} from {source}"
                 for s, (rows, _, _) in sampled.items() if not rows]
    if problems:
        raise ValidationError(problems)
    frames = {s: _frame(taskdef, rows) for s, (rows, _, _) in sampled.items()}

    with tempfile.TemporaryDirectory(prefix="ftlab-import-") as tmp:
        split_info = {}
        for s, df in frames.items():
            validate_columns(taskdef, df)
            _, drops, read = sampled[s]
            split_info[s] = {"rows": len(df), "sha256": write_split(taskdef, df, Path(tmp, f"{s}.parquet")),
                             "columns": list(taskdef.columns), "read": read, "dropped": sum(drops.values()),
                             "drops": dict(sorted(drops.items()))}
        manifest = {"name": name, "task": taskdef.name, "task_type": taskdef.type.name, "source": source,
                    **meta, "splits": split_info, "schema_version": SCHEMA_VERSION}
        return commit_dir(store, BUCKET, name, tmp, manifest, overwrite=overwrite)


def load_split(store: ObjectStore, name: str, split: str) -> pd.DataFrame:
    """One split of a committed dataset; NotFoundError without a manifest or that split."""
    manifest = require_manifest(store, BUCKET, name, what="dataset")
    info = manifest.get("splits", {}).get(split)
    if info is None:
        raise NotFoundError(f"dataset {name!r} has no split {split!r} (has: {sorted(manifest.get('splits', {}))})")
    data = read_file(store, BUCKET, name, f"{split}.parquet", manifest)  # sha256-checked: IntegrityError
    return frame_from_parquet_bytes(data, make_uri(BUCKET, f"{name}/{split}.parquet"))
