r"""Task definitions: the prompt, the ``\boxed{}`` answer format and the parser, defined once per
task so that the trainer trains on exactly what the evaluator parses (DESIGN principle 6).

A task is DATA (a YAML file under ``services/common/data/task_defs/`` or in a folder named by the env
var ``FTLAB_TASK_DIRS``) over one of the task types in ``services/common/data/task_types/`` (one plugin
module per type: columns, answer normalisation, scorers, report metrics). A new multiple-choice,
extractive, numeric or yes/no dataset needs a YAML file, not code. This module is the mechanism
(the registry of TaskDefs, prompts, targets, the ``\boxed{}`` parser); it names no task and no type.
"""
from __future__ import annotations

import json
import math
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from services.common.contract.errors import ValidationError, quote
from services.common.data.task_types import TaskType, all_types, get_type, type_names
from services.common.data.task_types.base import DEFAULT_LABELS


@dataclass(frozen=True)
class TaskDef:
    name: str                 # the study's metric name: "ai2_arc", "squad_v2", "OpenMathInstruct-2"
    short: str                # dataset / model naming: "arc", "squad", "openmath"
    type: TaskType            # the plugin (services/common/data/task_types/<type>.py)
    title: str                # the study's display title, e.g. "ARC (4-way MCQ)"
    system_prompt: str
    user_template: str        # str.format over canonical columns
    columns: tuple[str, ...]  # required canonical columns
    labels: tuple[str, ...] = DEFAULT_LABELS         # option letters (types with uses_labels)
    seed_stem: str | None = None                     # seed folder: {train,test}-<stem>.parquet
    hf_stem: str | None = None                       # hf folder: <stem>-{train,test}.jsonl
    hub_id: str | None = None
    hub_config: str | None = None
    hub_splits: tuple[tuple[str, str], ...] = (("train", "train"), ("test", "test"))  # ours → hub's
    hub_streaming: bool = False                      # stream huge hub splits instead of downloading
    fields: tuple[tuple[str, str], ...] = ()         # HF-schema field → this source's field name
    # (metric, higher_is_better) as the YAML's ``metrics:`` lists them (lm-eval's ``metric_list``);
    # the first is the task's headline. Default: the type's ``default_metrics``.
    metrics: tuple[tuple[str, bool], ...] = ()
    source_file: str | None = None

    @property
    def headline(self) -> tuple[str, bool]:
        """(metric, higher_is_better) the report and the plots rank this task by."""
        return self.metrics[0]

    def normalise(self, value: Any) -> str | None:
        """One answer (gold or parsed) in the type's canonical form, or None if it has none."""
        return self.type.normalise(self, value)


# ---------------------------------------------------------------------------------------------
# YAML → TaskDef, reporting every problem at once

_KEYS = {"name", "short", "type", "title", "system_prompt", "user_template", "labels",
         "seed_stem", "hf_stem", "hub", "fields", "metrics"}
_METRIC_KEYS = {"metric", "higher_is_better"}
_NOT_A_SCORE = frozenset({"per_class", "confusion_matrix", "support", "parsed"})
_HUB_KEYS = {"id", "config", "splits", "streaming"}
# short ends up inside model names like Qwen3-8B-openmath_SFT_LoRa256: no '_' or '-' allowed.
_SHORT_RE = re.compile(r"[a-z][a-z0-9]*")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


def task_from_mapping(data: Any, source: str = "<mapping>") -> TaskDef:
    """Validate one task definition (as loaded from YAML); raise ValidationError with all problems."""
    if not isinstance(data, Mapping):
        raise ValidationError(f"{source}: a task file must be a mapping, got {type(data).__name__}")
    p: list[str] = []
    for k in sorted(set(data) - _KEYS):
        p.append(f"{source}: unknown key {k!r} (known: {', '.join(sorted(_KEYS))})")
    for k in ("name", "short", "type", "title", "system_prompt", "user_template"):
        if not isinstance(data.get(k), str) or not data.get(k).strip():
            p.append(f"{source}: {k!r} is required and must be a non-empty string")
    name, short = data.get("name"), data.get("short")
    if isinstance(name, str) and name and not _NAME_RE.fullmatch(name):
        p.append(f"{source}: name {name!r} must match {_NAME_RE.pattern}")
    if isinstance(short, str) and short and not _SHORT_RE.fullmatch(short):
        p.append(f"{source}: short {short!r} must be lowercase letters and digits ({_SHORT_RE.pattern})")
    ttype = None
    if isinstance(data.get("type"), str):
        try:
            ttype = get_type(data["type"])
        except ValidationError:
            p.append(f"{source}: unknown type {data['type']!r} (known: {', '.join(type_names())})")
    if isinstance(data.get("system_prompt"), str) and "\\boxed" not in data["system_prompt"]:
        p.append(f"{source}: system_prompt must ask for the answer inside \\boxed{{}}")
    columns = ttype.columns if ttype else ()
    if isinstance(data.get("user_template"), str) and ttype:
        try:
            used = _template_fields(data["user_template"])
        except ValueError as e:
            p.append(f"{source}: user_template is not a valid format string: {e}")
            used = []
        allowed = [c for c in columns if c not in ("answer", "answers")]  # golds never leak into the prompt
        for f in used:
            if f not in allowed:
                p.append(f"{source}: user_template field {{{f}}} is not one of {allowed}")
    labels = data.get("labels", list(DEFAULT_LABELS))
    if "labels" in data and ttype is not None and not ttype.uses_labels:
        p.append(f"{source}: 'labels' only applies to type(s) "
                 f"{', '.join(t.name for t in all_types() if t.uses_labels)}")
    if (not isinstance(labels, list) or not 2 <= len(labels) <= 10
            or labels != list(string.ascii_uppercase[:len(labels)])):
        p.append(f"{source}: labels must be consecutive letters from A, 2 to 10 of them, got {labels!r}")
        labels = list(DEFAULT_LABELS)
    for k in ("seed_stem", "hf_stem"):
        if k in data and not (isinstance(data[k], str) and data[k]):
            p.append(f"{source}: {k!r} must be a non-empty string")
    hub = data.get("hub") or {}
    if not isinstance(hub, Mapping):
        p.append(f"{source}: 'hub' must be a mapping with keys {sorted(_HUB_KEYS)}")
        hub = {}
    for k in sorted(set(hub) - _HUB_KEYS):
        p.append(f"{source}: unknown hub key {k!r} (known: {', '.join(sorted(_HUB_KEYS))})")
    if hub and not (isinstance(hub.get("id"), str) and hub["id"]):
        p.append(f"{source}: hub.id is required when 'hub' is given")
    splits = hub.get("splits", {"train": "train", "test": "test"})
    if not isinstance(splits, Mapping) or not splits or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in splits.items()):
        p.append(f"{source}: hub.splits must map our split names to hub split names")
        splits = {}
    if not isinstance(hub.get("streaming", False), bool):
        p.append(f"{source}: hub.streaming must be true or false")
    fields = data.get("fields") or {}
    if not isinstance(fields, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in fields.items()):
        p.append(f"{source}: 'fields' must map HF-schema field names to this dataset's field names")
        fields = {}
    metrics = _metrics(p, data.get("metrics"), ttype, source)
    if p:
        raise ValidationError(p)
    return TaskDef(
        name=name, short=short, type=ttype, title=data["title"].strip(),
        system_prompt=data["system_prompt"].strip(), user_template=data["user_template"],
        columns=columns, labels=tuple(labels), seed_stem=data.get("seed_stem"),
        hf_stem=data.get("hf_stem", short), hub_id=hub.get("id"), hub_config=hub.get("config"),
        hub_splits=tuple(splits.items()), hub_streaming=bool(hub.get("streaming", False)),
        fields=tuple(fields.items()), metrics=metrics, source_file=None if source == "<mapping>" else source)


def _metrics(p: list[str], raw: Any, ttype: TaskType | None, source: str) -> tuple[tuple[str, bool], ...]:
    """The YAML's ``metrics: [{metric: F1, higher_is_better: true}, ...]`` (first = headline),
    checked against what the type scores; absent: the type's defaults."""
    if ttype is None:
        return ()
    if raw is None:
        return ttype.default_metrics
    known = sorted(({"accuracy", "format_success_rate"} | set(ttype.ci_metrics) | set(ttype.block_keys))
                   - _NOT_A_SCORE)
    if not isinstance(raw, list) or not raw:
        p.append(f"{source}: 'metrics' must be a non-empty list of {{metric: NAME, higher_is_better: BOOL}}")
        return ()
    out = []
    for i, m in enumerate(raw):
        where = f"{source}: metrics[{i}]"
        if not isinstance(m, Mapping):
            p.append(f"{where} must be a mapping {{metric: NAME, higher_is_better: BOOL}}")
            continue
        p.extend(f"{where}: unknown key {k!r} (known: {', '.join(sorted(_METRIC_KEYS))})"
                 for k in sorted(set(m) - _METRIC_KEYS))
        if m.get("metric") not in known:
            p.append(f"{where}: metric {m.get('metric')!r} is not one a {ttype.name} task scores (known: {known})")
        if not isinstance(m.get("higher_is_better"), bool):
            p.append(f"{where}: higher_is_better must be true or false")
        out.append((m.get("metric"), m.get("higher_is_better")))
    if len({m for m, _ in out}) != len(out):
        p.append(f"{source}: 'metrics' lists a metric twice")
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Registry: built-in YAMLs + FTLAB_TASK_DIRS, loaded on first use

_BUILTIN_DIR = Path(__file__).with_name("task_defs")
_REGISTRY: dict[str, TaskDef] | None = None  # keyed by name


def _same(a: TaskDef, b: TaskDef) -> bool:
    return {**a.__dict__, "source_file": None} == {**b.__dict__, "source_file": None}


def _register(registry: dict[str, TaskDef], task: TaskDef) -> None:
    keys = {task.name.lower(), task.short.lower()}
    for other in registry.values():
        if keys & {other.name.lower(), other.short.lower()}:
            if other.name == task.name and _same(other, task):
                return  # loading the same definition twice is harmless
            raise ValidationError(f"task {task.name!r} (short {task.short!r}) from {task.source_file} clashes "
                                  f"with registered task {other.name!r} (short {other.short!r}) "
                                  f"from {other.source_file}")
    registry[task.name] = task


def _read_task_file(path: Path) -> TaskDef:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ValidationError(f"{path}: cannot read task file: {e}") from None
    except yaml.YAMLError as e:
        raise ValidationError(f"{path}: invalid YAML: {e}") from None
    return task_from_mapping(data, str(path))


def reload_tasks() -> None:
    """(Re)build the registry from the built-in YAMLs and every ``*.yaml`` in ``FTLAB_TASK_DIRS``."""
    global _REGISTRY
    registry: dict[str, TaskDef] = {}
    dirs = [_BUILTIN_DIR] + [Path(d) for d in os.environ.get("FTLAB_TASK_DIRS", "").split(":") if d]
    problems: list[str] = []
    for d in dirs:
        if not d.is_dir():
            problems.append(f"task directory {d} (from FTLAB_TASK_DIRS) does not exist")
            continue
        for path in sorted(d.glob("*.yaml")):
            try:
                _register(registry, _read_task_file(path))
            except ValidationError as e:
                problems.extend(e.problems)
    if problems:
        _REGISTRY = None
        raise ValidationError(problems)
    _REGISTRY = registry


def _registry() -> dict[str, TaskDef]:
    if _REGISTRY is None:
        reload_tasks()
    return _REGISTRY


def load_task_file(path: str | os.PathLike) -> TaskDef:
    """Validate and register one extra task YAML; returns its TaskDef."""
    task = _read_task_file(Path(path))
    _register(_registry(), task)
    return task


def list_tasks() -> list[TaskDef]:
    return sorted(_registry().values(), key=lambda t: t.name.lower())


def get_task(name: str | TaskDef) -> TaskDef:
    """A task by its name or short name, case-insensitive; unknown names list the known ones."""
    if isinstance(name, TaskDef):
        return name
    key = str(name).strip().lower()
    for task in _registry().values():
        if key in (task.name.lower(), task.short.lower()):
            return task
    known = ", ".join(f"{t.name} ({t.short})" for t in list_tasks())
    raise ValidationError(f"unknown task {quote(name)}; known tasks: {known}")


# ---------------------------------------------------------------------------------------------
# Prompt and target: what the trainer trains on

def _row_dict(row: Any) -> dict[str, Any]:
    if hasattr(row, "_asdict"):
        return row._asdict()
    return dict(row.items()) if hasattr(row, "items") else dict(row)


def build_messages(task: str | TaskDef, row: Any) -> list[dict[str, str]]:
    """System + user chat messages for one dataset row (a dict or a pandas row)."""
    task = get_task(task)
    values = _row_dict(row)
    missing = [f for f in _template_fields(task.user_template) if f not in values]
    if missing:
        raise ValidationError(f"task {task.name}: row lacks column(s) {missing} used by the user template")
    return [{"role": "system", "content": task.system_prompt},
            {"role": "user", "content": task.user_template.format_map(values)}]


def render_prompt(tok, messages: list[dict[str, str]]) -> str:
    """``messages`` through the tokenizer's chat template with the generation prompt, as text.
    Thinking is switched off where the template has the switch (Qwen3's ``enable_thinking``);
    other templates (SmolLM2, Llama...) get no extra variable."""
    extra = {"enable_thinking": False} if "enable_thinking" in str(tok.chat_template or "") else {}
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)


def gold_answer(task: str | TaskDef, row: Any) -> str | None:
    """The row's gold answer in canonical form (``parse_answer``'s form for predictions).

    SQuAD v2: the first gold answer, "" when unanswerable (``gold_answers`` has them all)."""
    task = get_task(task)
    if task.type.multi_gold:
        golds = gold_answers(task, row)
        return golds[0] if golds else ""
    value = _row_dict(row).get("answer")
    if _missing(value):
        return None  # no gold
    return normalise_answer(task, value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def required_columns(task: str | TaskDef) -> list[str]:
    """The canonical columns a stored dataset must have for ``task`` (its type's optional ones aside)."""
    task = get_task(task)
    return [c for c in task.columns if c not in task.type.optional_columns]


def gold_answers(task: str | TaskDef, row: Any) -> list[str]:
    """Multi-gold types (SQuAD v2): every gold answer of the row, in dataset order, ``[]`` when unanswerable.

    Reads the ``answers`` column (a list); a dataset imported before it existed has only
    ``answer`` and falls back to ``[answer]`` (``[]`` when it is ""). Golds are stripped, never
    mapped through the no-answer synonyms: the text "None" is an answer, not an abstention.
    Other task types: ``[gold_answer(row)]`` (``[]`` when it has none).
    """
    task = get_task(task)
    values = _row_dict(row)
    if not task.type.multi_gold:
        gold = gold_answer(task, row)
        return [] if gold is None else [gold]
    answers = values.get("answers")
    if answers is None or (isinstance(answers, float) and math.isnan(answers)):
        first = values.get("answer")
        answers = [] if _missing(first) or str(first).strip() == "" else [first]
    elif isinstance(answers, str):  # a JSON list written as text, or one answer
        try:
            answers = json.loads(answers) if answers.strip() else []
        except ValueError:
            answers = [answers]
        answers = answers if isinstance(answers, list) else [answers]
    return [str(a).strip() for a in answers if not _missing(a)]


def with_answers(task: str | TaskDef, df: Any) -> Any:
    """A multi-gold (SQuAD v2) frame from before the ``answers`` column, given it (``[answer]``, or
    ``[]`` when unanswerable) so older datasets still load; other frames are returned unchanged."""
    task = get_task(task)
    if not task.type.multi_gold or "answers" in df.columns:
        return df
    df = df.copy()
    df["answers"] = [gold_answers(task, {"answer": a}) for a in df["answer"]]
    return df


def format_target(task: str | TaskDef, row: Any) -> str:
    r"""The assistant message the trainer trains on: exactly ``\boxed{<gold>}``."""
    task = get_task(task)
    gold = gold_answer(task, row)
    if gold is None:
        raise ValidationError(f"task {task.name}: gold answer {_row_dict(row).get('answer')!r} cannot be normalised")
    if gold == "" and task.type.no_answer_target:  # trains on the first gold; none: abstain
        gold = task.type.no_answer_target
    return f"\\boxed{{{gold}}}"


# ---------------------------------------------------------------------------------------------
# Parsing: what the evaluator reads back

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _boxed_contents(text: str) -> list[str]:
    r"""Contents of every complete ``\boxed{...}``, in order; nested braces balance, ``\{`` is literal."""
    found = []
    for m in _BOXED_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text):
            c = text[i]
            if c == "\\":
                i += 2
                continue
            depth += (c == "{") - (c == "}")
            i += 1
            if depth == 0:
                found.append(text[m.end():i - 1])
                break
    return found


def answer_closed(text: str) -> bool:
    r"""True once ``text`` holds a complete ``\boxed{...}``: the evaluator may stop generating."""
    return bool(text) and bool(_boxed_contents(text))


def parse_answer(task: str | TaskDef, text: str | None) -> str | None:
    r"""The normalised content of the LAST complete ``\boxed{...}``; None = format failure."""
    task = get_task(task)
    boxed = _boxed_contents(text or "")
    return normalise_answer(task, boxed[-1]) if boxed else None


def normalise_answer(task: str | TaskDef, value: Any) -> str | None:
    """One answer (gold or parsed) in the task type's canonical form, or None if it has none."""
    return get_task(task).normalise(value)
