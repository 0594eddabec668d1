r"""Task definitions: the prompt, the ``\boxed{}`` answer format and the parser, defined once per
task so that the trainer trains on exactly what the evaluator parses (DESIGN principle 6).

A task is DATA (a YAML file under ``services/common/tasks/`` or in a folder named by the env var
``FTLAB_TASK_DIRS``) over one of three task types implemented here. A new multiple-choice,
extractive or numeric dataset needs a YAML file, not code.
"""
from __future__ import annotations

import math
import numbers
import os
import re
import string
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

import yaml

from services.common.errors import ValidationError


class TaskType(str, Enum):
    MCQ4 = "mcq4"                  # multiple choice, answer a letter
    SQUAD_V2 = "squad_v2"          # extractive span from a passage, may be unanswerable
    MATH_NUMERIC = "math_numeric"  # a single number


# The canonical dataset columns per type (data_import writes exactly these).
TYPE_COLUMNS: dict[TaskType, tuple[str, ...]] = {
    TaskType.MCQ4: ("id", "question", "answer"),
    TaskType.SQUAD_V2: ("id", "title", "context", "question", "answer", "answers"),
    TaskType.MATH_NUMERIC: ("id", "question", "answer"),
}

# What the model writes for "no answer in the passage"; the parser maps it (and the study's other
# empty-like answers) to "", the gold of an unanswerable question.
UNANSWERABLE = "unanswerable"
EMPTY_LIKE = frozenset({"", "unanswerable", "unknown", "no answer", "none", "null", "n/a", "empty"})


@dataclass(frozen=True)
class TaskDef:
    name: str                 # the study's metric name: "ai2_arc", "squad_v2", "OpenMathInstruct-2"
    short: str                # dataset / model naming: "arc", "squad", "openmath"
    type: TaskType
    title: str                # the study's display title, e.g. "ARC (4-way MCQ)"
    system_prompt: str
    user_template: str        # str.format over canonical columns
    columns: tuple[str, ...]  # required canonical columns
    labels: tuple[str, ...] = ("A", "B", "C", "D")   # mcq4 option letters the parser accepts
    seed_stem: str | None = None                     # seed folder: {train,test}-<stem>.parquet
    hf_stem: str | None = None                       # hf folder: <stem>-{train,test}.jsonl
    hub_id: str | None = None
    hub_config: str | None = None
    hub_splits: tuple[tuple[str, str], ...] = (("train", "train"), ("test", "test"))  # ours → hub's
    hub_streaming: bool = False                      # stream huge hub splits instead of downloading
    fields: tuple[tuple[str, str], ...] = ()         # HF-schema field → this source's field name
    source_file: str | None = None


# ---------------------------------------------------------------------------------------------
# YAML → TaskDef, reporting every problem at once

_KEYS = {"name", "short", "type", "title", "system_prompt", "user_template", "labels",
         "seed_stem", "hf_stem", "hub", "fields"}
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
            ttype = TaskType(data["type"])
        except ValueError:
            p.append(f"{source}: unknown type {data['type']!r} (known: {', '.join(t.value for t in TaskType)})")
    if isinstance(data.get("system_prompt"), str) and "\\boxed" not in data["system_prompt"]:
        p.append(f"{source}: system_prompt must ask for the answer inside \\boxed{{}}")
    columns = TYPE_COLUMNS.get(ttype, ())
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
    labels = data.get("labels", ["A", "B", "C", "D"])
    if "labels" in data and ttype is not None and ttype is not TaskType.MCQ4:
        p.append(f"{source}: 'labels' only applies to type mcq4")
    if (not isinstance(labels, list) or not 2 <= len(labels) <= 10
            or labels != list(string.ascii_uppercase[:len(labels)])):
        p.append(f"{source}: labels must be consecutive letters from A, 2 to 10 of them, got {labels!r}")
        labels = ["A", "B", "C", "D"]
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
    if p:
        raise ValidationError(p)
    return TaskDef(
        name=name, short=short, type=ttype, title=data["title"].strip(),
        system_prompt=data["system_prompt"].strip(), user_template=data["user_template"],
        columns=columns, labels=tuple(labels), seed_stem=data.get("seed_stem"),
        hf_stem=data.get("hf_stem", short), hub_id=hub.get("id"), hub_config=hub.get("config"),
        hub_splits=tuple(splits.items()), hub_streaming=bool(hub.get("streaming", False)),
        fields=tuple(fields.items()), source_file=None if source == "<mapping>" else source)


# ---------------------------------------------------------------------------------------------
# Registry: built-in YAMLs + FTLAB_TASK_DIRS, loaded on first use

_BUILTIN_DIR = Path(__file__).with_name("tasks")
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
    raise ValidationError(f"unknown task {name!r}; known tasks: {known}")


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
    """The row's gold answer, normalised exactly as ``parse_answer`` normalises a model's answer."""
    task = get_task(task)
    value = _row_dict(row).get("answer")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = ""  # missing gold: unanswerable for SQuAD, no answer (None) for the other types
    return normalise_answer(task, value)


def format_target(task: str | TaskDef, row: Any) -> str:
    r"""The assistant message the trainer trains on: exactly ``\boxed{<gold>}``."""
    task = get_task(task)
    gold = gold_answer(task, row)
    if gold is None:
        raise ValidationError(f"task {task.name}: gold answer {_row_dict(row).get('answer')!r} cannot be normalised")
    if task.type is TaskType.SQUAD_V2 and gold == "":
        gold = UNANSWERABLE
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
    task = get_task(task)
    if task.type is TaskType.MCQ4:
        return _norm_mcq(str(value), task.labels)
    if task.type is TaskType.SQUAD_V2:
        return _norm_span(str(value))
    number = value if isinstance(value, numbers.Real) and not isinstance(value, bool) else parse_number(str(value))
    return canonical_number(number)


def _unwrap(s: str) -> str:
    r"""Drop wrappers around the whole answer: ``$...$``, ``\text{...}``, ``\mathrm{...}``."""
    s = s.strip()
    while True:
        m = re.fullmatch(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{(.*)\}", s, re.S)
        if m and "{" not in m.group(1) and "}" not in m.group(1):
            s = m.group(1).strip()
        elif len(s) >= 2 and s[0] == s[-1] == "$":
            s = s[1:-1].strip()
        else:
            return s


def _norm_mcq(s: str, labels: tuple[str, ...]) -> str | None:
    """"B", "(B)", "B.", "b", "B) text", "Option B", "2" → the option letter; anything else → None."""
    s = re.sub(r"^(?:option|answer|choice)\s*[:\-]?\s*", "", _unwrap(s), flags=re.I)
    if m := re.fullmatch(r"\((\w+)\)(\s.*)?", s, re.S):
        token = m.group(1)
    elif m := re.fullmatch(r"([A-Za-z]|\d+)(?:[.):](.*)|(\s.*))?", s, re.S):
        token = m.group(1)
        # "a ball..." is prose, not option A: a bare letter followed by text must be uppercase
        if m.group(3) is not None and token.islower():
            return None
    else:
        return None
    if token.isdigit():
        i = int(token)
        return labels[i - 1] if 1 <= i <= len(labels) else None
    token = token.upper()
    return token if token in labels else None


def _norm_span(s: str) -> str:
    s = _unwrap(s)
    return "" if s.lower().strip(" .!\"'") in EMPTY_LIKE else s


_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_FRAC = r"\\frac\s*\{\s*(" + _NUM + r")\s*\}\s*\{\s*(" + _NUM + r")\s*\}"


def _div(a: str, b: str) -> float | None:
    return float(a) / float(b) if float(b) != 0 else None


def parse_number(s: str) -> float | None:
    r"""``1,234``, ``$5``, ``5.0``, ``-2``, ``3/4``, ``\frac{3}{4}``, ``\dfrac``, ``2\frac{1}{2}``,
    ``50\%``, ``5 cm``, ``x = 5`` → float; anything else (expressions, intervals, words) → None."""
    s = _unwrap(s)
    s = re.sub(r"\\(?:text|mathrm|mbox)\s*\{([^{}]*)\}", r" \1", s)
    for junk in ("\\!", "\\,", "\\;", "\\ ", "\\$", "$", "\\%", "%", "^{\\circ}", "^\\circ", "°", "{,}"):
        s = s.replace(junk, "," if junk == "{,}" else "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"^[A-Za-z]\w*\s*=\s*", "", s.strip())  # "x = 5"
    s = re.sub(r"\\frac(\d)(\d)$", r"\\frac{\1}{\2}", s)  # LaTeX shorthand \frac34
    s = re.sub(r"^([-+])\s+", r"\1", s.strip())
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    if m := re.fullmatch(r"(" + _NUM + r")(?:\s+[A-Za-z][A-Za-z .]*)?", s):  # a number, maybe with units
        value = float(m.group(1))
    elif m := re.fullmatch(r"(" + _NUM + r")\s*/\s*(" + _NUM + r")", s):
        value = _div(m.group(1), m.group(2))
    elif m := re.fullmatch(r"([-+]?)" + _FRAC, s):
        value = _div(m.group(2), m.group(3))
        value = -value if value is not None and m.group(1) == "-" else value
    elif m := re.fullmatch(r"([-+]?)(\d+)\s*" + _FRAC, s):  # mixed number 2\frac{1}{2}
        frac = _div(m.group(3), m.group(4))
        value = None if frac is None else (int(m.group(2)) + frac) * (-1 if m.group(1) == "-" else 1)
    else:
        return None
    return value if value is not None and math.isfinite(value) else None


def canonical_number(x: float | None) -> str | None:
    """One spelling per value: integers without ".0", others as Python's shortest repr."""
    if x is None or not math.isfinite(float(x)):
        return None
    x = float(x)
    if x == 0:
        return "0"  # no "-0"
    if x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return repr(x)
