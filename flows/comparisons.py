"""What each configuration changed against the model it was made from, with its uncertainty.

Every evaluated model whose parent was evaluated too (a fine-tune -> its base model, a
post-training-quantized model -> its source) is compared with that parent on the items both
evaluations share: ``services.evaluator.compare`` (what ``ftlab compare`` prints), i.e. the
difference model - parent of each headline metric with a 95% paired-bootstrap CI and, for per-item
right/wrong metrics (accuracy, format success), the exact McNemar p-value. Torch-free.

Seeds: the models of one configuration trained with several seeds (``..._s1_...``, ``..._s2_...``:
naming.without_seed) make one row, paired on items and seeds (a PTQ of seed 2 against the seed-2
source; a fine-tune of every seed against the one base): the mean difference, its across-seed sd and
a two-level (seeds, then items) bootstrap CI, and ``within_seed_noise`` when another set of seeds
could well reverse it (services/evaluator/stats.py).

Like for like: both sides must be scored under the same engine, dtype and generation settings.
A model may have several evaluations in the run: its own (the first listed, the summary's) and the
ones the planner added to score it again under another engine (flows/experiment.py
``_like_for_like_steps``: a parent or rival of a model vLLM cannot load, scored on HF too). Each
pair uses evaluations scored alike, chosen by the scoring each evaluation recorded (``scoring``:
the engine that ran, not the one asked for): the run's own first, then any other stored
evaluation of the model scored that way; only without one is the pair's own evaluation used, and
the row says why it is not a comparison of models alone (``like_for_like`` false, never
``clear``) and how to score the parent that way.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from services.common.contract.errors import NotFoundError
from services.common.contract.naming import without_seed
from services.common.data.task_types import get_type
from services.common.storage import artifacts
from services.common.storage.store import ObjectStore
from services.evaluator import stats
from services.evaluator.compare import _labels, _nullable, compare, load_eval

COLUMNS = ["model", "vs", "relation", "task", "metric", "items", "parent_value", "value", "diff",
           "ci95_low", "ci95_high", "mcnemar_p", "clear", "n_seeds", "sd_seeds", "within_seed_noise",
           "engine", "parent_engine", "like_for_like", "note"]


def parent_of(store: ObjectStore, model: str) -> tuple[str | None, str]:
    """(the model it was made from, how): a trained model's base, a quantized model's source."""
    m = artifacts.read_manifest(store, "models", model) or {}
    if m.get("kind") == "trained":
        return m.get("base_model") or next(iter(m.get("parents") or []), None), "fine-tune vs base"
    if m.get("kind") == "quantized":
        return next(iter(m.get("parents") or []), None), "PTQ vs source"
    return None, ""


# ----------------------------------------------------------------------------- like for like

def scoring(metrics: dict[str, Any]) -> dict[str, Any]:
    """What shapes an evaluation's scores besides the model: the engine that ran (not the one asked
    for), the dtype, and the generation settings."""
    spec = metrics.get("spec") or {}
    return {"engine": (metrics.get("engine") or {}).get("name", "hf"),
            "dtype": (metrics.get("hardware") or {}).get("dtype"),
            "max_new_tokens": spec.get("max_new_tokens"), "kv_cache_dtype": spec.get("kv_cache_dtype", "auto")}


def _label(s: dict[str, Any]) -> str:
    return " ".join(str(s[k]) for k in ("engine", "dtype") if s.get(k))


def _evaluations_of(store: ObjectStore, model: str) -> list[str]:
    return sorted({k.split("/")[1] for k in store.list_keys("evaluations", model + "/")
                   if k.endswith("/manifest.json") and k.count("/") == 2})


def by_model(evaluations: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Model -> its evaluation ids in the run, in the order listed: the first is its own (what the
    summary shows), later ones score it again under another engine (a like-for-like evaluation)."""
    runs: dict[str, list[str]] = {}
    for model, eval_id in evaluations:
        if eval_id not in runs.setdefault(model, []):
            runs[model].append(eval_id)
    return runs


def _metrics(store: ObjectStore, model: str, eval_id: str) -> dict[str, Any]:
    return artifacts.read_json(store, "evaluations", f"{model}/{eval_id}", "metrics.json")


def evaluation_like(store: ObjectStore, model: str, want: dict[str, Any], run: list[str],
                    tasks: set[str]) -> tuple[str, bool] | None:
    """(an evaluation of ``model`` scored as ``want`` sharing a task with ``tasks``, whether it is one
    of the run's): the run's evaluations first (``run``, in order: the planner's like-for-like
    evaluation), then any other stored one; None when there is none."""
    for eid in list(run) + [e for e in _evaluations_of(store, model) if e not in run]:
        try:
            metrics = _metrics(store, model, eid)
        except NotFoundError:  # listed but not committed in full
            continue
        if scoring(metrics) == want and set(metrics.get("datasets", {})) & tasks:
            return eid, eid in run
    return None


def like_for_like(store: ObjectStore, parent: str, parent_evals: list[str],
                  child_metrics: dict[str, Any]) -> tuple[str, str]:
    """(the parent's evaluation scored like the child's, a note): the parent's own (the first of
    ``parent_evals``, its evaluations in the run) when it is, else the first evaluation of the parent
    that is (``evaluation_like``: the run's, then storage's), else the parent's own with the note
    saying what differs and that none exists (the caller does not call that row clear)."""
    want = scoring(child_metrics)
    have = scoring(_metrics(store, parent, parent_evals[0]))
    if have == want:
        return parent_evals[0], ""
    if found := evaluation_like(store, parent, want, parent_evals[1:], set(child_metrics.get("datasets", {}))):
        eid, in_run = found
        return eid, (f"parent scored again under {_label(want)} for this comparison ({parent}/{eid})" if in_run
                     else f"parent re-scored like the child ({parent}/{eid}, stored outside this run)")
    differ = ", ".join(f"{k} {have[k]} vs {want[k]}" for k in want if have[k] != want[k])
    how = {"engine": f"--engine {want['engine']}", "dtype": f"--dtype {want['dtype']}",
           "max_new_tokens": f"--max-new-tokens {want['max_new_tokens']}",
           "kv_cache_dtype": f"--kv-cache-dtype {want['kv_cache_dtype']}"}
    flags = " ".join(how[k] for k in how if have[k] != want[k])
    return parent_evals[0], (f"NOT like for like: parent scored with {differ}, and no evaluation of it scored like "
                             f"the child is in this run or in storage; the difference mixes the models with the "
                             f"scoring; score the parent again (ftlab eval --model {parent} {flags} ...) "
                             f"and rebuild the report")


def scored_alike(store: ObjectStore, models: list[str], runs: dict[str, list[str]]) -> dict[str, str] | None:
    """An evaluation of each of ``models``, all scored alike (``scoring``): their own (the first of
    ``runs``) when they already are; else, under the scoring of one of them (the most common
    first), the evaluation of each other model scored that way (``evaluation_like``: the run's, then
    storage's); None when no scoring has one for every model."""
    own = {m: runs[m][0] for m in models}
    metrics = {m: _metrics(store, m, own[m]) for m in models}
    scorings = {m: scoring(metrics[m]) for m in models}
    targets = [dict(t) for t, _ in Counter(tuple(sorted(s.items(), key=str)) for s in scorings.values()).most_common()]
    for want in targets:
        picked: dict[str, str] = {}
        for m in models:
            found = (own[m], True) if scorings[m] == want else evaluation_like(
                store, m, want, runs[m][1:], set(metrics[m].get("datasets", {})))
            if found is None:
                break
            picked[m] = found[0]
        else:
            return picked
    return None


def alike_note(picked: dict[str, str], runs: dict[str, list[str]], label: str) -> str:
    """The note of a pair scored alike through evaluations other than the models' own."""
    again = [f"{m}/{e}" for m, e in picked.items() if e != runs[m][0]]
    return f"scored again under {label} for this comparison: {', '.join(again)}" if again else ""


# ----------------------------------------------------------------------------- the table

def configurations(evals: dict[str, str]) -> dict[str, list[str]]:
    """Configuration name -> its evaluated models, seed order (a model without a seed is its own)."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for model in evals:
        config, seed = without_seed(model)
        groups.setdefault(config, []).append((-1 if seed is None else seed, model))
    return {c: [m for _, m in sorted(members)] for c, members in groups.items()}


def vs_parent_table(store: ObjectStore, evaluations: list[tuple[str, str]], n_resamples: int = 1000,
                    seed: int = 0) -> pd.DataFrame:
    """One row per (configuration, task, metric): parent value, model value, difference, 95% paired
    CI (two-level over seeds where the configuration has several), McNemar p where defined (one
    seed), and ``clear`` = like for like and the CI excludes 0 (and p < 0.05 where there is a p).
    ``evaluations``: (model, eval_id) pairs; a model's first is its own, later ones (like-for-like
    evaluations) are used where the child was scored differently from the parent's own (``by_model``)."""
    runs = by_model(evaluations)
    evals = {m: ids[0] for m, ids in runs.items()}
    rows: list[dict[str, Any]] = []
    for config, models in configurations(evals).items():
        pairs = []  # (parent, parent eval id, model, model eval id, note, model's metrics.json)
        relation = ""
        for model in models:
            parent, relation = parent_of(store, model)
            if parent is None or parent not in evals:
                continue
            try:
                child_metrics = load_eval(store, f"{model}/{evals[model]}")[0]
                parent_eval, note = like_for_like(store, parent, runs[parent], child_metrics)
            except NotFoundError:  # an evaluation without per-item predictions cannot be paired
                continue
            pairs.append((parent, parent_eval, model, evals[model], note, child_metrics))
        if len(pairs) == 1:
            rows += _single(store, pairs[0], relation, n_resamples, seed)
        elif pairs:
            rows += _replicated(store, config, pairs, relation, n_resamples, seed)
    return pd.DataFrame(rows, columns=COLUMNS)


def _clear(lo, hi, p, note: str) -> bool:
    return not note.startswith("NOT") and lo is not None and (lo > 0 or hi < 0) and (p is None or p < 0.05)


def _single(store, pair, relation: str, n_resamples: int, seed: int) -> list[dict[str, Any]]:
    parent, parent_eval, model, model_eval, note, child_metrics = pair
    try:
        result = compare(store, f"{parent}/{parent_eval}", f"{model}/{model_eval}", n_resamples, seed)
    except NotFoundError:
        return []
    engines = _engines(store, parent, parent_eval, child_metrics)
    rows = []
    for task, entry in result["tasks"].items():
        for metric in get_type(entry["type"]).lead_metrics:  # the type's plugin: what the report leads with
            r = entry.get("metrics", {}).get(metric)
            if r is None or r["diff"] is None:
                continue
            lo, hi = r["ci95"] if r["ci95"] else (None, None)
            p = r.get("mcnemar_p")
            rows.append({"model": model, "vs": parent, "relation": relation, "task": task, "metric": metric,
                         "items": entry["shared_items"], "parent_value": r["a"], "value": r["b"],
                         "diff": r["diff"], "ci95_low": lo, "ci95_high": hi, "mcnemar_p": p,
                         "clear": _clear(lo, hi, p, note), "n_seeds": 1, "sd_seeds": None,
                         "within_seed_noise": False, **engines, "note": note})
    return rows


def _engines(store, parent: str, parent_eval: str, child_metrics: dict[str, Any]) -> dict[str, Any]:
    parent_scoring = scoring(load_eval(store, f"{parent}/{parent_eval}")[0])
    child_scoring = scoring(child_metrics)
    return {"engine": _label(child_scoring), "parent_engine": _label(parent_scoring),
            "like_for_like": parent_scoring == child_scoring}


def items_by_id(preds: pd.DataFrame, task: str, ttype: str) -> pd.DataFrame:
    """One task's predictions by item id: the parsed answer and the gold(s) as the scorer takes them."""
    t = preds[preds.task == task].drop_duplicates("id").set_index("id")
    golds = _nullable(t.gold)
    if get_type(ttype).multi_gold:
        golds = list(map(list, t.golds)) if "golds" in t else [get_type(ttype).canonical_gold(None, g) for g in golds]
    # object columns: pandas 3 would infer str and turn a None (no answer parsed) into NaN
    return pd.DataFrame({"parsed": pd.Series(_nullable(t.parsed), index=t.index, dtype=object),
                         "gold": pd.Series(golds, index=t.index, dtype=object)})


def paired_on_seeds(side_a: list, side_b: list, task: str, n_resamples: int = 1000,
                    seed: int = 0) -> tuple[dict[str, Any], int] | None:
    """B - A of ``task`` paired on items and seeds: ``side_a[i]`` and ``side_b[i]`` are seed i's
    loaded evaluations (``load_eval``: metrics, predictions; a side with one entry is the same for
    every seed). stats.replicated_paired on the items every evaluation shares, and how many items
    that is; None when one lacks the task or no item is shared."""
    if not all(task in m["datasets"] for m, _ in side_a + side_b):
        return None
    ttype = side_b[0][0]["datasets"][task]["type"]
    items_a, items_b = ([items_by_id(p, task, ttype) for _, p in side] for side in (side_a, side_b))
    shared = sorted(set.intersection(*(set(x.index) for x in items_a + items_b)))
    if not shared:
        return None
    result = stats.replicated_paired(ttype, [list(x.loc[shared, "parsed"]) for x in items_a],
                                     [list(x.loc[shared, "parsed"]) for x in items_b],
                                     list(items_b[0].loc[shared, "gold"]), n_resamples, seed, _labels(task))
    return result, len(shared)


def _replicated(store, config: str, pairs: list, relation: str, n_resamples: int, seed: int) -> list[dict[str, Any]]:
    """One configuration's seeds against their parents, paired on items and seeds."""
    loaded_children = [load_eval(store, f"{m}/{e}") for _, _, m, e, _, _ in pairs]
    parents = list(dict.fromkeys((p, e) for p, e, *_ in pairs))
    loaded_parents = {pe: load_eval(store, f"{pe[0]}/{pe[1]}") for pe in parents}
    parent_side = [loaded_parents[(p, e)] for p, e, *_ in pairs] if len(parents) > 1 else [loaded_parents[parents[0]]]
    notes = sorted({n for *_, n, _ in pairs if n})
    note = "; ".join(notes)
    vs = without_seed(parents[0][0])[0]
    engines = _engines(store, parents[0][0], parents[0][1], pairs[0][5])
    engines["like_for_like"] = engines["like_for_like"] and not any(n.startswith("NOT") for n in notes)
    return _paired_rows(parent_side, loaded_children, {"model": config, "vs": vs, "relation": relation,
                                                        **engines, "note": note}, n_resamples, seed)


def _paired_rows(side_a: list, side_b: list, shared: dict[str, Any], n_resamples: int, seed: int) -> list[dict[str, Any]]:
    """One row per task and lead metric of B - A paired on items and seeds (``paired_on_seeds``), the
    columns of ``vs_parent_table``; ``shared``: the columns every row has (model, vs, relation,
    engines, note)."""
    rows = []
    for task, d in side_b[0][0]["datasets"].items():
        got = paired_on_seeds(side_a, side_b, task, n_resamples, seed)
        if got is None:
            continue
        result, n_items = got
        for metric in get_type(d["type"]).lead_metrics:
            r = result.get(metric)
            if r is None or r["mean"] is None:
                continue
            lo, hi = r["ci95"] if r["ci95"] else (None, None)
            rows.append({**shared, "task": task, "metric": metric, "items": n_items, "parent_value": r["a"],
                         "value": r["b"], "diff": r["mean"], "ci95_low": lo, "ci95_high": hi, "mcnemar_p": None,
                         "clear": _clear(lo, hi, None, shared["note"]), "n_seeds": r["n_seeds"],
                         "sd_seeds": r["sd_seeds"], "within_seed_noise": r["within_seed_noise"]})
    return rows


# ----------------------------------------------------------------------------- configurations against each other

def seed_sides(a: list[str], b: list[str]) -> tuple[list[str], list[str]] | None:
    """Two configurations' models (``configurations``' lists) lined up seed by seed: when both have
    several, the seeds both have (seed i with seed i; None when they share none); a side with one
    model is the same for every seed of the other."""
    if not a or not b:
        return None
    if len(a) > 1 and len(b) > 1:
        sa, sb = ({without_seed(m)[1]: m for m in side} for side in (a, b))
        both = sorted(set(sa) & set(sb), key=lambda s: -1 if s is None else s)
        return ([sa[s] for s in both], [sb[s] for s in both]) if both else None
    return a, b


BETWEEN = "configuration vs configuration"
MAX_CONFIGURATIONS = 5  # per base and training data: 10 pairs (the mini-study's five); more: ftlab compare


def between_configurations(store: ObjectStore, evaluations: list[tuple[str, str]], n_resamples: int = 1000,
                           seed: int = 0) -> pd.DataFrame:
    """Fine-tunes of one base on the same data against each other (LoRA vs DoRA, full FT vs LoRA
    r8, ...): every pair of trained configurations with the same base and the same name before
    ``_SFT_`` (the study's names carry the training data there), ``model`` − ``vs`` paired on items
    and seeds (``seed_sides``, ``paired_on_seeds``), one row per task and lead metric, the columns of
    ``vs_parent_table`` (relation ``configuration vs configuration``). A group of more than
    MAX_CONFIGURATIONS is not tabulated (the pairs grow as n²; each is a bootstrap): it is named in
    ``attrs["not_tabulated"]`` (group -> configurations) instead. Both sides are scored alike
    where the run or storage holds a way (``scored_alike``: a like-for-like evaluation)."""
    runs = by_model(evaluations)
    evals = {m: ids[0] for m, ids in runs.items()}
    by_base: dict[tuple[str, str], list[tuple[str, list[str]]]] = {}
    for config, models in sorted(configurations(evals).items()):
        parent, relation = parent_of(store, models[0])
        if relation == "fine-tune vs base" and parent:
            by_base.setdefault((parent, config.partition("_SFT_")[0]), []).append((config, models))
    too_many = {head: len(m) for (_, head), m in by_base.items() if len(m) > MAX_CONFIGURATIONS}
    by_base = {k: m for k, m in by_base.items() if len(m) <= MAX_CONFIGURATIONS}
    loaded: dict[tuple[str, str], Any] = {}

    def load(model: str, eval_id: str):
        if (model, eval_id) not in loaded:
            loaded[(model, eval_id)] = load_eval(store, f"{model}/{eval_id}")
        return loaded[(model, eval_id)]

    rows: list[dict[str, Any]] = []
    for members in by_base.values():
        for i, (name_a, models_a) in enumerate(members):
            for name_b, models_b in members[i + 1:]:
                sides = seed_sides(models_a, models_b)
                if sides is None:
                    continue
                try:
                    picked = scored_alike(store, sides[0] + sides[1], runs) or evals
                    side_a, side_b = ([load(m, picked[m]) for m in side] for side in sides)
                except NotFoundError:  # no per-item predictions: nothing to pair
                    continue
                sa, sb = scoring(side_a[0][0]), scoring(side_b[0][0])
                note = alike_note(picked, runs, _label(sa)) if sa == sb else (
                    f"NOT like for like: {name_a} scored with {_label(sa)}, {name_b} with {_label(sb)}, and no "
                    "evaluations of both scored alike are in this run or in storage")
                rows += _paired_rows(side_a, side_b, {"model": name_b, "vs": name_a, "relation": BETWEEN,
                                                      "engine": _label(sb), "parent_engine": _label(sa),
                                                      "like_for_like": sa == sb, "note": note}, n_resamples, seed)
    out = pd.DataFrame(rows, columns=COLUMNS)
    out.attrs["not_tabulated"] = too_many
    return out


def between_markdown(between: pd.DataFrame) -> list[str]:
    """The report's section for ``between_configurations`` (empty when there is no pair)."""
    skipped = between.attrs.get("not_tabulated") or {}
    left = ([f"Not tabulated (more than {MAX_CONFIGURATIONS} configurations, the pairs grow as n²): "
             + ", ".join(f"{head} ({n})" for head, n in sorted(skipped.items()))
             + "; compare two with `ftlab compare A/EVAL B/EVAL`.", ""] if skipped else [])
    if between.empty:
        return ["## Configurations against each other", "", *left] if skipped else []
    t = lead_table(between).rename(columns={"vs": "against", "parent": "against's value", "this model": "value"})
    seeded = int((between.n_seeds > 1).sum())
    return ["## Configurations against each other", "",
            f"Fine-tunes of the same base, each pair on the same test items{' and seeds' if seeded else ''}: "
            "the difference is the row's configuration minus the one it is set against"
            + (", the mean over the seeds both have, its 95% CI two-level (seeds, then items)" if seeded else
               ", its 95% CI a paired bootstrap")
            + f". {int(between.clear.sum())} of {len(between)} are clear; all rows are in "
              "`configuration_comparisons.csv`.", "", *left,
            t.astype(object).where(t.notna(), None).to_markdown(index=False, floatfmt=".4g", missingval=""), ""]


def verdict(row: pd.Series) -> str:
    """The comparison in words: clear, within seed noise, not clear, or not like for like."""
    if not row.get("like_for_like", True):
        return "not like for like"
    if row["clear"]:
        return "yes"
    return "within seed noise" if row.get("within_seed_noise") else "no"


def lead_table(vs: pd.DataFrame) -> pd.DataFrame:
    """The report's first table: readable columns, clear differences first."""
    if vs.empty:
        return vs
    t = vs.copy()
    t["95% CI"] = [f"[{lo:+.3g}, {hi:+.3g}]" if pd.notna(lo) else "" for lo, hi in zip(t.ci95_low, t.ci95_high)]
    t["p (McNemar)"] = [f"{p:.2g}" if pd.notna(p) else "—" for p in t.mcnemar_p]  # —: not a right/wrong metric
    t["clear?"] = [verdict(r) for _, r in t.iterrows()]
    t["seeds"] = [f"{int(n)} (sd {sd:.3g})" if n and n > 1 and pd.notna(sd) else "1" for n, sd in zip(t.n_seeds, t.sd_seeds)]
    t["scored with"] = [(e if e == pe else f"{e} vs parent {pe}") + (" (re-scored to match)" if "scored again" in str(n)
                                                                     or "re-scored" in str(n) else "")
                        for e, pe, n in zip(t.engine, t.parent_engine, t.note)]
    t = t.sort_values(["clear", "relation", "model"], ascending=[False, True, True], kind="stable")
    return t[["model", "vs", "task", "metric", "items", "seeds", "scored with", "parent_value", "value", "diff",
              "95% CI", "p (McNemar)", "clear?"]].rename(columns={"parent_value": "parent", "value": "this model"})
