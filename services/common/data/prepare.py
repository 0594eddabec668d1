"""Data preparation: from raw files in their official layouts to reproducible, leak-checked splits.

A **recipe** (YAML; the shipped ones are in ``data_recipes/`` beside this module, which reads them,
documented in ``docs/DATA.md``) names a
task, and per split a source, filters and a draw::

    name: arc                      # the dataset written (``datasets/arc/``); --name overrides
    task: ai2_arc
    splits:
      test:
        source: {path: "{shared}/datasets/raw/arc/arc_challenge_test_1172.jsonl"}
        n: 200
        seed: 42
        method: seeded             # seeded (numpy Generator) | study (pandas DataFrame.sample)
        stratify: answer           # none | answer (the gold letter) | answerable (SQuAD v2)
        ratio: {A: 0.25, ...}      # optional stratum shares; default: the pool's own shares
        filters: {max_prompt_tokens: 1024, tokenizer: "{shared}/tokenizers/qwen3"}
      train: {...}
    leakage: {target: train, drop: true, near_threshold: 0.8, ngram: 3}

Splits are drawn in the recipe's order, the leakage target (train) last; with ``drop`` each split's
pool is first cleaned of the items drawn before it, so a ``validation`` split (for model selection,
e.g. a learning-rate sweep) and ``test`` are disjoint even when drawn from the same source file, and
the manifest's ``disjoint`` records the leakage check between every two held-out splits.

``{shared}`` is ``$FTLAB_SHARED_DIR`` or ``../shared``; other relative paths are relative to the
working directory. A source is a file (``.parquet`` seed layout, ``.jsonl`` Hugging Face schema,
``.json`` official nested SQuAD or a JSON array), a folder (every such file in it, by name), or a hub
dataset ``{hub: ID, config: ..., split: ...}`` (GPU hosts; needs ``datasets`` and the network).

The same recipe and source give byte-identical parquet files. The manifest records the recipe, the
source files' sha256, the counts read / kept / dropped with reasons, the seed and the leakage report,
so ``ftlab data show NAME`` says how a split was made. A bad recipe is refused with every problem at
once (unknown keys, unknown task, missing files, ``n`` larger than what survives the filters, a
stratum that cannot be filled) and nothing is written.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import yaml

from services.common.data import importing as D
from services.common.data import leakage as L
from services.common.data import tasks as T
from services.common.storage.artifacts import commit_dir, read_manifest, require_manifest, sha256_file
from services.common.contract.errors import NotFoundError, PreconditionError, ValidationError
from services.common.storage.store import ObjectStore, make_uri
from services.common.data.task_types import all_types

RECIPES_DIR = Path(__file__).with_name("data_recipes")  # owned here, where they are read
RECIPE_KEYS = {"name", "task", "description", "splits", "leakage"}
SPLIT_KEYS = {"source", "n", "seed", "method", "stratify", "ratio", "filters"}
FILE_SOURCE_KEYS, HUB_SOURCE_KEYS = {"path"}, {"hub", "config", "split"}
FILTER_KEYS = {"max_prompt_tokens", "tokenizer", "plain_number_gold"}
LEAKAGE_KEYS = {"target", "drop", "near_threshold", "ngram", "examples"}
METHODS = ("seeded", "study")
STRATIFY = ("none", *sorted({s for t in all_types() for s in t.strata}))  # what the task types offer
SOURCE_SUFFIXES = (".parquet", ".jsonl", ".json")
# Drop reasons added by preparation (besides data_import.DROP_REASONS).
FILTER_PLAIN_NUMBER = "filter_plain_number_gold"
FILTER_PROMPT_TOKENS = "filter_max_prompt_tokens"
LEAKED = "leakage_duplicate"
_PLAIN_NUMBER = re.compile(r"-?\d+(\.\d+)?")  # the study's / PROVENANCE's "numeric" expected answer


def shared_dir() -> Path:
    return Path(os.environ.get("FTLAB_SHARED_DIR", "../shared"))


def _resolve(path: str) -> Path:
    return Path(str(path).replace("{shared}", str(shared_dir()))).expanduser()


# ---------------------------------------------------------------------------------------------
# Recipe: load and validate (every problem at once)

def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A shipped recipe's name (``study-arc``) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise NotFoundError(f"recipe file {p} not found")
        return p
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise NotFoundError(f"no recipe {str(name_or_path)!r}; shipped: {', '.join(shipped_recipes())}; "
                            "or give a path to a .yaml file")
    return shipped


def load_recipe(name_or_path: str | os.PathLike, check_sources: bool = True) -> dict[str, Any]:
    """Read and validate a recipe; returns it with ``_file`` and ``_sha256`` of the YAML added.
    ``check_sources=False`` skips the file-existence checks (validating a recipe on another host)."""
    path = recipe_path(name_or_path)
    text = path.read_bytes()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValidationError(f"{path}: not valid YAML: {e}") from None
    problems = validate_recipe(raw, str(path), check_sources)
    if problems:
        raise ValidationError(problems)
    return {**raw, "_file": str(path), "_sha256": hashlib.sha256(text).hexdigest()}


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def validate_recipe(raw: Any, where: str = "<recipe>", check_sources: bool = True) -> list[str]:
    """Every problem of a recipe mapping (empty list: valid)."""
    if not isinstance(raw, Mapping):
        return [f"{where}: a recipe must be a mapping, got {type(raw).__name__}"]
    p = [f"{where}: unknown key {k!r} (known: {', '.join(sorted(RECIPE_KEYS))})"
         for k in sorted(set(raw) - RECIPE_KEYS) if not str(k).startswith("_")]  # _file, _sha256: load_recipe's
    task = None
    try:
        task = T.get_task(raw.get("task", ""))
    except ValidationError as e:
        p += [f"{where}: {x}" for x in e.problems]
    name = raw.get("name")
    if name is not None and not (isinstance(name, str) and D._NAME_RE.fullmatch(name)):
        p.append(f"{where}: name {name!r} must match {D._NAME_RE.pattern}")
    splits = raw.get("splits")
    if not isinstance(splits, Mapping) or not splits:
        p.append(f"{where}: 'splits' must map split names (train, test, ...) to their draw")
        splits = {}
    for s, spec in splits.items():
        p += _validate_split(task, s, spec, f"{where}: splits.{s}", check_sources)
    leak = raw.get("leakage", {})
    if not isinstance(leak, Mapping):
        p.append(f"{where}: 'leakage' must be a mapping ({', '.join(sorted(LEAKAGE_KEYS))})")
        leak = {}
    p += [f"{where}: unknown leakage key {k!r} (known: {', '.join(sorted(LEAKAGE_KEYS))})"
          for k in sorted(set(leak) - LEAKAGE_KEYS)]
    target = leak.get("target")
    if target is not None and target not in splits:
        p.append(f"{where}: leakage.target {target!r} is not one of the splits {sorted(splits)}")
    if "drop" in leak and not isinstance(leak["drop"], bool):
        p.append(f"{where}: leakage.drop must be true or false")
    th = leak.get("near_threshold", 0.8)
    if isinstance(th, bool) or not isinstance(th, (int, float)) or not 0 < th <= 1:
        p.append(f"{where}: leakage.near_threshold must be a number in (0, 1], got {th!r}")
    for k in ("ngram", "examples"):
        if k in leak and not _positive_int(leak[k]):
            p.append(f"{where}: leakage.{k} must be a positive integer, got {leak[k]!r}")
    return p


def _validate_split(task: T.TaskDef | None, split: Any, spec: Any, where: str, check_sources: bool) -> list[str]:
    if not (isinstance(split, str) and D._SPLIT_RE.fullmatch(split)):
        return [f"{where}: split name must match {D._SPLIT_RE.pattern}"]
    if not isinstance(spec, Mapping):
        return [f"{where}: must be a mapping ({', '.join(sorted(SPLIT_KEYS))})"]
    p = [f"{where}: unknown key {k!r} (known: {', '.join(sorted(SPLIT_KEYS))})" for k in sorted(set(spec) - SPLIT_KEYS)]
    p += _validate_source(spec.get("source"), f"{where}.source", check_sources)
    if not _positive_int(spec.get("n")):
        p.append(f"{where}.n must be a positive integer, got {spec.get('n')!r}")
    seed = spec.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        p.append(f"{where}.seed must be a non-negative integer, got {seed!r}")
    method = spec.get("method", "seeded")
    if method not in METHODS:
        p.append(f"{where}.method: unknown {method!r} (known: {', '.join(METHODS)})")
    strat = spec.get("stratify", "none")
    if strat not in STRATIFY:
        p.append(f"{where}.stratify: unknown {strat!r} (known: {', '.join(STRATIFY)})")
    elif strat != "none":
        if method == "study":
            p.append(f"{where}: method 'study' (the study's plain pandas sample) cannot stratify")
        if task is not None and strat not in task.type.strata:
            need = ", ".join(t.name for t in all_types() if strat in t.strata)
            p.append(f"{where}.stratify: {strat!r} applies to {need} tasks, not {task.type.name}")
    ratio = spec.get("ratio")
    if ratio is not None:
        known = _strata_names(task, strat)
        if strat == "none":
            p.append(f"{where}.ratio needs stratify: answer or answerable")
        elif not isinstance(ratio, Mapping) or not ratio or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in ratio.values()):
            p.append(f"{where}.ratio must map strata to shares in [0, 1]")
        else:
            bad = [k for k in ratio if known is not None and k not in known]
            if bad:
                p.append(f"{where}.ratio: unknown strata {bad} (known: {known})")
            if abs(sum(ratio.values()) - 1) > 1e-9:
                p.append(f"{where}.ratio shares must sum to 1, got {sum(ratio.values())}")
    filters = spec.get("filters", {})
    if not isinstance(filters, Mapping):
        return p + [f"{where}.filters must be a mapping ({', '.join(sorted(FILTER_KEYS))})"]
    p += [f"{where}.filters: unknown key {k!r} (known: {', '.join(sorted(FILTER_KEYS))})"
          for k in sorted(set(filters) - FILTER_KEYS)]
    if "max_prompt_tokens" in filters:
        if not _positive_int(filters["max_prompt_tokens"]):
            p.append(f"{where}.filters.max_prompt_tokens must be a positive integer")
        tok = filters.get("tokenizer")
        if not isinstance(tok, str) or not tok:
            p.append(f"{where}.filters.max_prompt_tokens needs filters.tokenizer (a tokenizer folder or hub id)")
        elif check_sources and tok.startswith(("{shared}", ".", "/", "~")) and not _resolve(tok).is_dir():
            p.append(f"{where}.filters.tokenizer: folder {_resolve(tok)} not found")
    elif "tokenizer" in filters:
        p.append(f"{where}.filters.tokenizer is only used with max_prompt_tokens")
    if "plain_number_gold" in filters:
        if not isinstance(filters["plain_number_gold"], bool):
            p.append(f"{where}.filters.plain_number_gold must be true or false")
        if task is not None and "plain_number_gold" not in task.type.filters:
            need = ", ".join(t.name for t in all_types() if "plain_number_gold" in t.filters)
            p.append(f"{where}.filters.plain_number_gold applies to {need} tasks, not {task.type.name}")
    return p


def _validate_source(src: Any, where: str, check: bool) -> list[str]:
    if not isinstance(src, Mapping) or not ({"path", "hub"} & set(src)):
        return [f"{where} must be {{path: FILE_OR_FOLDER}} or {{hub: ID, config: ..., split: ...}}"]
    keys = FILE_SOURCE_KEYS if "path" in src else HUB_SOURCE_KEYS
    p = [f"{where}: unknown key {k!r} (known: {', '.join(sorted(keys))})" for k in sorted(set(src) - keys)]
    if "path" in src:
        path = _resolve(str(src["path"]))
        if check and not path.exists():
            p.append(f"{where}: {path} not found")
        elif check and path.is_file() and path.suffix not in SOURCE_SUFFIXES:
            p.append(f"{where}: {path} is not one of {', '.join(SOURCE_SUFFIXES)}")
        elif check and path.is_dir() and not _folder_files(path):
            p.append(f"{where}: folder {path} holds no {', '.join(SOURCE_SUFFIXES)} file")
    else:
        if not isinstance(src.get("hub"), str) or not src["hub"]:
            p.append(f"{where}.hub must be a dataset id")
        if not isinstance(src.get("split"), str) or not src.get("split"):
            p.append(f"{where}.split is required with hub (e.g. train, validation)")
    return p


def _strata_names(task: T.TaskDef | None, strat: str) -> list[str] | None:
    if task is None or strat not in task.type.strata:
        return None
    return task.type.strata_names(task, strat)


# ---------------------------------------------------------------------------------------------
# Sources: records in file order

def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in SOURCE_SUFFIXES)


def _flatten_squad(doc: Mapping[str, Any]) -> list[dict]:
    """The official nested SQuAD JSON (data → paragraphs → qas) as one record per question, with
    every gold answer and ``is_impossible`` kept."""
    out = []
    for article in doc["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                out.append({"id": qa["id"], "title": article.get("title", ""), "context": para["context"],
                            "question": qa["question"], "answers": qa.get("answers", []),
                            "is_impossible": bool(qa.get("is_impossible", not qa.get("answers")))})
    return out


def read_file(path: Path) -> list[dict]:
    """One source file's records: parquet rows, JSON Lines, a JSON array, or official SQuAD JSON.
    A file that is none of these is a ValidationError naming it (never a parser's traceback)."""
    try:
        return _read_file(path)
    except ValidationError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:  # JSONDecodeError, UnicodeDecodeError, ArrowInvalid
        raise ValidationError(f"{path}: cannot read it as .parquet, JSON Lines or .json records: "
                              f"{type(e).__name__}: {str(e)[:200]}") from None


def _read_file(path: Path) -> list[dict]:
    if path.suffix == ".json":
        doc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(doc, Mapping) and "data" in doc:
            return _flatten_squad(doc)
        if not isinstance(doc, list):
            raise ValidationError(f"{path}: a .json source must be official SQuAD (data → paragraphs → qas) "
                                  "or an array of records")
        return doc
    return D._read_records(path)


def load_hub(hub_id: str, config: str | None, split: str) -> list[dict]:
    """A hub split's records (GPU hosts with network). Tests replace this function."""
    try:
        import datasets
        return list(datasets.load_dataset(hub_id, config, split=split))
    except Exception as e:  # offline host, unknown id or split
        raise NotFoundError(f"cannot load {hub_id} ({config or 'default'}) split {split!r} from the hub: {e}") from e


def read_source(src: Mapping[str, Any]) -> tuple[list[dict], dict[str, Any]]:
    """(records, provenance) for a recipe source; provenance names the files and their sha256."""
    if "hub" in src:
        return load_hub(src["hub"], src.get("config"), src["split"]), {
            "hub": src["hub"], "config": src.get("config"), "split": src["split"]}
    path = _resolve(str(src["path"]))
    files = _folder_files(path) if path.is_dir() else [path]
    records = [r for f in files for r in read_file(f)]
    return records, {"path": str(src["path"]), "files": {f.name: sha256_file(f) for f in files}}


def source_rows(task: T.TaskDef, path: str) -> list[dict]:
    """Every canonical row of a file or folder, each with its id (``ftlab data leakage``)."""
    records, _ = read_source({"path": path})
    rows, drops = D.convert_records(task, records)
    if not rows:  # e.g. a SQuAD file checked as ARC: say so instead of reporting 0 leaks
        why = ", ".join(f"{k} {n}" for k, n in sorted(drops.items())) or "no records"
        raise ValidationError(f"{path}: no {task.name} rows in {len(records)} records ({why}); "
                              f"is it a {task.name} file?")
    D._frame(task, rows)  # assigns content-hash ids to rows without one
    return rows


# ---------------------------------------------------------------------------------------------
# Filters and draws

def _gold_raw(rec: Mapping[str, Any]) -> Any:
    return rec.get("answer", rec.get("expected_answer"))


def _is_plain_number(v: Any) -> bool:
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return math.isfinite(float(v))
    return bool(_PLAIN_NUMBER.fullmatch(str(v).replace(",", "").strip()))


def prompt_token_counts(task: T.TaskDef, rows: list[dict], tokenizer: str) -> list[int]:
    """Tokens of each row's prompt (system + user through the chat template, thinking disabled, with
    the generation prompt), exactly what the evaluator feeds the model. Lazy transformers import."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ValidationError("filters.max_prompt_tokens needs the transformers package (no torch needed): "
                              "pip install transformers, or install ftlab[ml]") from None
    ref = str(_resolve(tokenizer)) if _resolve(tokenizer).is_dir() else tokenizer
    tok = AutoTokenizer.from_pretrained(ref)
    texts = [tok.apply_chat_template(T.build_messages(task, r), add_generation_prompt=True,
                                     enable_thinking=False, tokenize=False) for r in rows]
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def candidates(task: T.TaskDef, records: list[dict], filters: Mapping[str, Any]) -> tuple[list[dict], Counter]:
    """Source records → (canonical rows that pass the filters, in source order; drops by reason)."""
    drops: Counter = Counter()
    if filters.get("plain_number_gold"):
        kept = [r for r in records if _gold_raw(r) is None or _is_plain_number(_gold_raw(r))]
        drops[FILTER_PLAIN_NUMBER] = len(records) - len(kept)
        records = kept
    pool, conv_drops = D.convert_records(task, records)
    drops += conv_drops
    if "max_prompt_tokens" in filters and pool:
        counts = prompt_token_counts(task, pool, filters["tokenizer"])
        drops[FILTER_PROMPT_TOKENS] = sum(c > filters["max_prompt_tokens"] for c in counts)
        pool = [r for r, c in zip(pool, counts) if c <= filters["max_prompt_tokens"]]
    return pool, drops


def stratum(task: T.TaskDef, strat: str, row: Mapping[str, Any]) -> str:
    return task.type.strata[strat](row) if strat in task.type.strata else "all"


def targets(n: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder allocation of ``n`` items over strata by share: each target is within one
    item of ``n * share`` and they sum to ``n`` (ties broken by stratum name)."""
    exact = {k: n * v for k, v in shares.items()}
    out = {k: math.floor(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (-(exact[k] - out[k]), k))[:n - sum(out.values())]:
        out[k] += 1
    return dict(sorted(out.items()))


def draw(task: T.TaskDef, pool: list[dict], spec: Mapping[str, Any], where: str) -> tuple[list[dict], dict, list[str]]:
    """(drawn rows in output order, draw record, problems). ``study``: pandas ``DataFrame.sample(n,
    random_state=seed)`` over the pool in source order, the study's own rule (its DataPreparation
    notebooks). ``seeded``: numpy ``default_rng(seed)``: a permutation of the pool, or per stratum
    a permutation of that stratum's items up to its target, then one permutation of the union."""
    n, seed = spec["n"], spec.get("seed", 0)
    method, strat = spec.get("method", "seeded"), spec.get("stratify", "none")
    info: dict[str, Any] = {"n": n, "seed": seed, "method": method, "stratify": strat, "pool": len(pool)}
    if n > len(pool):
        return [], info, [f"{where}: n={n} but only {len(pool)} item(s) survive the filters"]
    if method == "study":
        idx = pd.RangeIndex(len(pool)).to_series().sample(n=n, random_state=seed).tolist()
        return [pool[i] for i in idx], info, []
    rng = np.random.default_rng(seed)
    if strat == "none":
        return [pool[i] for i in rng.permutation(len(pool))[:n]], info, []
    keys = [stratum(task, strat, r) for r in pool]
    have = Counter(keys)
    shares = spec.get("ratio") or {k: v / len(pool) for k, v in have.items()}
    want = targets(n, shares)
    info.update({"pool_strata": dict(sorted(have.items())), "targets": want})
    short = [f"{where}: stratum {k!r} needs {t} item(s) but the pool has {have.get(k, 0)}"
             for k, t in want.items() if t > have.get(k, 0)]
    if short:
        return [], info, short
    chosen: list[int] = []
    for k, t in want.items():
        members = [i for i, key in enumerate(keys) if key == k]
        chosen += [members[j] for j in rng.permutation(len(members))[:t]]
    order = rng.permutation(len(chosen))
    rows = [pool[chosen[j]] for j in order]
    info["strata"] = dict(sorted(Counter(stratum(task, strat, r) for r in rows).items()))
    return rows, info, []


# ---------------------------------------------------------------------------------------------
# Prepare

def prepare(store: ObjectStore, recipe: str | os.PathLike | Mapping[str, Any], name: str | None = None,
            overwrite: bool = False) -> dict[str, Any]:
    """Run a recipe (a shipped name, a YAML path, or a mapping already loaded) and commit the dataset
    ``datasets/{name or recipe name or task short}/``; returns the manifest. Raises ValidationError
    with every problem (recipe, sources, counts, strata), PreconditionError when the dataset exists
    and not ``overwrite``. Nothing is written unless every split can be drawn."""
    if isinstance(recipe, Mapping):
        problems = validate_recipe(recipe)
        if problems:
            raise ValidationError(problems)
        if "_sha256" not in recipe:  # a mapping made in code: hash its canonical JSON
            recipe = {**recipe, "_file": None, "_sha256": hashlib.sha256(
                json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()}
    else:
        recipe = load_recipe(recipe)
    task = T.get_task(recipe["task"])
    name = name or recipe.get("name") or task.short
    if not D._NAME_RE.fullmatch(name):
        raise ValidationError(f"dataset name {name!r} must match {D._NAME_RE.pattern}")
    if read_manifest(store, D.BUCKET, name) is not None and not overwrite:
        raise PreconditionError(f"dataset {make_uri(D.BUCKET, name + '/')} already exists (--overwrite replaces it)")

    specs: dict[str, Mapping[str, Any]] = recipe["splits"]
    leak_cfg = recipe.get("leakage", {})
    target = leak_cfg.get("target", "train" if "train" in specs and len(specs) > 1 else None)
    drop = leak_cfg.get("drop", True)
    pair = task.type.leakage_pair
    # The target split is drawn last, from a pool cleaned of the other splits' items.
    order = [s for s in specs if s != target] + ([target] if target else [])
    problems: list[str] = []
    drawn: dict[str, list[dict]] = {}
    info: dict[str, dict[str, Any]] = {}
    for s in order:
        spec = specs[s]
        try:
            records, provenance = read_source(spec["source"])
        except (OSError, ValueError, ValidationError, NotFoundError) as e:  # unreadable file, hub offline
            problems.append(f"splits.{s}.source: cannot read: {e}")
            drawn[s] = []
            continue
        pool, drops = candidates(task, records, spec.get("filters", {}))
        if drop and drawn:  # every split is disjoint from those drawn before it (train: from all)
            others = [r for o in drawn.values() for r in o]
            pool, leaked = L.drop_leaks(pool, others, pair=pair)
            drops[LEAKED] = len(leaked)
        rows, draw_info, bad = draw(task, pool, spec, f"splits.{s}")
        problems += bad
        drawn[s] = rows
        info[s] = {"source": provenance, "read": len(records), "drops": {k: v for k, v in sorted(drops.items()) if v},
                   **draw_info}
    if problems:
        raise ValidationError(problems)

    final = {s: [dict(r) for r in drawn[s]] for s in specs}
    frames = {s: D._frame(task, final[s]) for s in specs}  # gives every row its id (content hash if none)
    report = None
    check_args = {"pair": pair, "threshold": leak_cfg.get("near_threshold", 0.8), "n": leak_cfg.get("ngram", 3),
                  "examples": leak_cfg.get("examples", 5)}
    if target:
        others = [r for s in order if s != target for r in final[s]]
        report = L.check(final[target], others, **check_args)
        report = {"target": target, "against": [s for s in order if s != target], "dropped_from_target": drop,
                  **{k: (v[:50] if isinstance(v, list) and k.startswith("train_ids") else v) for k, v in report.items()}}
    disjoint = _disjoint(final, [s for s in order if s != target], check_args)

    with tempfile.TemporaryDirectory(prefix="ftlab-prepare-") as tmp:
        split_info = {}
        for s in specs:  # the recipe's order
            df = frames[s]
            D.validate_columns(task, df)
            i = info[s]
            split_info[s] = {"rows": len(df), "sha256": D.write_split(task, df, Path(tmp, f"{s}.parquet")),
                             "columns": list(task.columns), "dropped": sum(i["drops"].values()), **i}
        clean = {k: v for k, v in recipe.items() if not k.startswith("_")}
        manifest = {"name": name, "task": task.name, "task_type": task.type.name, "source": "prepare",
                    "recipe": clean, "recipe_file": recipe["_file"], "recipe_sha256": recipe["_sha256"],
                    "splits": split_info, "leakage": report, "schema_version": D.SCHEMA_VERSION,
                    **({"disjoint": disjoint} if disjoint else {})}
        return commit_dir(store, D.BUCKET, name, tmp, manifest, overwrite=overwrite)


def _disjoint(final: Mapping[str, list[dict]], held_out: list[str], check_args: dict) -> list[dict[str, Any]]:
    """The leakage check between every two held-out splits (validation vs test: model selection on
    one must not see the other's items), in draw order; each later split was drawn from a pool
    cleaned of the earlier ones (exact and normalised duplicates), so only near ones can remain."""
    out = []
    for i, later in enumerate(held_out):
        for earlier in held_out[:i]:
            r = L.check(final[later], final[earlier], **check_args)
            out.append({"split": later, "against": earlier, "exact": r["exact"], "normalised": r["normalised"],
                        "near": r["near"], "ids_near": r["train_ids_near"][:50], "near_examples": r["near_examples"]})
    return out


# ---------------------------------------------------------------------------------------------
# Show

def describe(store: ObjectStore, name: str) -> str:
    """A dataset's manifest as text a reader can follow: source, recipe, per split the draw and
    what was kept and dropped, and the leakage report."""
    m = require_manifest(store, D.BUCKET, name, what="dataset")
    lines = [f"dataset {m['uri']}  task {m['task']} ({m['task_type']})  source {m['source']}  "
             f"created {m.get('created_at', '?')}"]
    if m["source"] == "prepare":
        lines.append(f"recipe {m.get('recipe_file') or '(mapping)'}  sha256 {m['recipe_sha256'][:16]}…")
    elif m["source"] == "hub":
        lines.append(f"hub {m.get('source_id')} ({m.get('hub_config') or 'default'})  seed {m.get('seed')}")
    else:
        lines.append(f"folder {m.get('source_path')}  files {m.get('source_files')}")
    for s, i in m["splits"].items():
        why = ", ".join(f"{k} {v}" for k, v in sorted(i.get("drops", {}).items())) or "none"
        lines.append(f"  {s}: {i['rows']} rows  sha256 {i['sha256'][:16]}…  read {i.get('read', '?')}  "
                     f"dropped {i.get('dropped', '?')} ({why})")
        if "method" in i:
            lines.append(f"    draw: {i['method']} n={i['n']} seed={i['seed']} stratify={i['stratify']} "
                         f"from a pool of {i['pool']}" + (f"; strata {i['strata']}" if i.get("strata") else ""))
            src = i["source"]
            lines.append("    source: " + (f"hub {src['hub']} {src.get('config') or ''} {src['split']}" if "hub" in src
                                            else ", ".join(f"{f} sha256 {h[:16]}…" for f, h in src["files"].items())))
    leak = m.get("leakage")
    if leak:
        lines.append(f"  leakage {leak['target']} vs {', '.join(leak['against'])} "
                     f"({'dropped from ' + leak['target'] if leak['dropped_from_target'] else 'reported only'}): "
                     f"exact {leak['exact']}, normalised {leak['normalised']}, "
                     f"near (>= {leak['threshold']} Jaccard of word {leak['ngram']}-grams) {leak['near']}")
        for ex in leak.get("near_examples", []):
            lines.append(f"    near {ex['jaccard']}: {ex['train_id']} | {ex['train']}")
            lines.append(f"          vs {ex['test_id']} | {ex['test']}")
    for d in m.get("disjoint", []):
        lines.append(f"  leakage {d['split']} vs {d['against']}: exact {d['exact']}, normalised {d['normalised']}, "
                     f"near {d['near']}")
    return "\n".join(lines)
