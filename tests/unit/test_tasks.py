"""Task definitions: registry, YAML validation, prompts, targets and the \\boxed{} parser."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from services.common.data import tasks as T
from services.common.contract.errors import ValidationError

BUILTIN_YAMLS = sorted(Path(T.__file__).with_name("task_defs").glob("*.yaml"))


@pytest.fixture
def task_dirs():
    """Set FTLAB_TASK_DIRS for one test; restore it and the registry afterwards."""
    saved = os.environ.get("FTLAB_TASK_DIRS")

    def set_dirs(*dirs):
        os.environ["FTLAB_TASK_DIRS"] = ":".join(str(d) for d in dirs)
        T.reload_tasks()

    yield set_dirs
    if saved is None:
        os.environ.pop("FTLAB_TASK_DIRS", None)
    else:
        os.environ["FTLAB_TASK_DIRS"] = saved
    T.reload_tasks()


# --- registry -----------------------------------------------------------------------------------

def test_every_shipped_yaml_loads_and_validates():
    assert len(BUILTIN_YAMLS) == 4
    for path in BUILTIN_YAMLS:
        task = T.task_from_mapping(__import__("yaml").safe_load(path.read_text()), str(path))
        assert "\\boxed" in task.system_prompt
        assert task.columns == task.type.columns


def test_builtin_tasks_match_the_study():
    got = {(t.name, t.short, t.type.name, t.title) for t in T.list_tasks()}
    assert got == {
        ("ai2_arc", "arc", "mcq4", "ARC (4-way MCQ)"),
        ("squad_v2", "squad", "squad_v2", "SQuAD v2"),
        ("OpenMathInstruct-2", "openmath", "math_numeric", "OpenMathInstruct-2 (numeric)"),
        ("boolq", "boolq", "boolq", "BoolQ (binary)"),
    }
    arc = T.get_task("ai2_arc")
    assert (arc.seed_stem, arc.hf_stem, arc.hub_id, arc.hub_config) == ("ai2_arc", "arc", "allenai/ai2_arc", "ARC-Challenge")
    assert T.get_task("boolq").hub_id == "google/boolq"
    assert T.get_task("squad").hub_id == "rajpurkar/squad_v2"
    assert T.get_task("openmath").hub_id == "nvidia/OpenMathInstruct-2"
    assert T.get_task("squad").columns == ("id", "title", "context", "question", "answer", "answers")


@pytest.mark.parametrize("name", ["ai2_arc", "ARC", "arc", "Ai2_Arc"])
def test_get_task_by_name_or_short_case_insensitive(name):
    assert T.get_task(name).name == "ai2_arc"


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValidationError) as e:
        T.get_task("gsm8k")
    msg = str(e.value)
    assert "gsm8k" in msg and "ai2_arc" in msg and "squad_v2" in msg and "OpenMathInstruct-2" in msg


# --- YAML: a new task without code ----------------------------------------------------------------

NEW_MCQ = textwrap.dedent(r"""
    name: sciq
    short: sciq
    type: mcq4
    title: SciQ (4-way MCQ)
    system_prompt: Answer the science question. Output only the option letter inside \boxed{}, e.g. \boxed{A}.
    user_template: "Question: {question}"
    hf_stem: sciq
    fields: {question: question_stem}
""")


def test_new_multiple_choice_task_from_yaml_only(tmp_path, task_dirs):
    task_dirs()  # a clean registry, restored after the test
    path = tmp_path / "sciq.yaml"
    path.write_text(NEW_MCQ)
    task = T.load_task_file(path)
    assert T.get_task("SCIQ") is task and task.type.name == "mcq4"
    assert task.labels == ("A", "B", "C", "D") and task.fields == (("question", "question_stem"),)
    row = {"id": "q1", "question": "Which is a gas? A. ice B. steam C. rock D. wood", "answer": "B"}
    msgs = T.build_messages("sciq", row)
    assert msgs[1] == {"role": "user", "content": "Question: " + row["question"]}
    assert T.format_target(task, row) == "\\boxed{B}"
    assert T.parse_answer(task, "I think \\boxed{(b)}") == "B"
    assert T.load_task_file(path) == task  # reloading the same file is harmless


def test_task_dirs_env_loads_every_yaml(tmp_path, task_dirs):
    (tmp_path / "sciq.yaml").write_text(NEW_MCQ)
    task_dirs(tmp_path)
    assert "sciq" in [t.name for t in T.list_tasks()]
    assert T.get_task("ai2_arc")  # built-ins stay


def test_task_dirs_env_with_missing_dir_fails(tmp_path, task_dirs):
    with pytest.raises(ValidationError, match="does not exist"):
        task_dirs(tmp_path / "nope")


def test_yaml_validation_reports_all_problems_at_once(tmp_path, task_dirs):
    task_dirs()
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent("""
        name: bad task
        short: Bad_Short
        type: mcq5
        system_prompt: Answer with a letter.
        user_template: "{question} {answer} {nope}"
        colour: blue
    """))
    with pytest.raises(ValidationError) as e:
        T.load_task_file(path)
    text = " | ".join(e.value.problems)
    for needle in ("unknown key 'colour'", "'title' is required", "name 'bad task'", "short 'Bad_Short'",
                   "unknown type 'mcq5'", "\\boxed", ):
        assert needle in text, needle
    assert len(e.value.problems) >= 6
    assert "bad" not in [t.name for t in T.list_tasks()]


def test_yaml_template_fields_checked_against_type_columns():
    base = {"name": "x", "short": "x", "type": "squad_v2", "title": "X", "system_prompt": "\\boxed{} it"}
    T.task_from_mapping({**base, "user_template": "{title}: {context} {question}"})
    with pytest.raises(ValidationError) as e:
        T.task_from_mapping({**base, "user_template": "{context} {answer}"})  # the gold must not leak
    assert "{answer}" in str(e.value)
    with pytest.raises(ValidationError, match="labels"):
        T.task_from_mapping({**base, "type": "mcq4", "user_template": "{question}", "labels": ["A", "C"]})


def test_yaml_clashing_with_builtin_is_refused(tmp_path, task_dirs):
    task_dirs()
    path = tmp_path / "arc2.yaml"
    path.write_text(NEW_MCQ.replace("short: sciq", "short: arc"))
    with pytest.raises(ValidationError, match="clashes"):
        T.load_task_file(path)


# --- prompts and targets ----------------------------------------------------------------------------

def test_build_messages_squad():
    row = {"id": "1", "title": "T", "context": "Paris is in France.", "question": "Where is Paris?", "answer": "France"}
    system, user = T.build_messages("squad", row)
    assert system["role"] == "system" and "\\boxed{unanswerable}" in system["content"]
    assert user["role"] == "user" and "Paris is in France." in user["content"] and "Where is Paris?" in user["content"]
    assert "France" not in user["content"].replace("in France.", "")  # the gold is not in the prompt
    with pytest.raises(ValidationError, match="context"):
        T.build_messages("squad", {"question": "q"})


def test_format_target_is_exactly_boxed_gold():
    assert T.format_target("arc", {"answer": "C"}) == "\\boxed{C}"
    assert T.format_target("arc", {"answer": "3"}) == "\\boxed{C}"  # numeric ARC label
    assert T.format_target("squad", {"answer": "the 10th century"}) == "\\boxed{the 10th century}"
    assert T.format_target("squad", {"answer": ""}) == "\\boxed{unanswerable}"
    assert T.format_target("openmath", {"answer": 1008.0}) == "\\boxed{1008}"
    assert T.format_target("openmath", {"answer": "0.75"}) == "\\boxed{0.75}"
    with pytest.raises(ValidationError):
        T.format_target("openmath", {"answer": "\\sqrt{2}"})


@pytest.mark.parametrize("task,row", [
    ("arc", {"answer": "A"}), ("arc", {"answer": "4"}), ("arc", {"answer": "D"}),
    ("squad", {"answer": ""}), ("squad", {"answer": "Franklin D. Roosevelt"}), ("squad", {"answer": "f(x) = {1}"}),
    ("openmath", {"answer": -2.0}), ("openmath", {"answer": 0.1}), ("openmath", {"answer": "\\frac{1}{3}"}),
    ("openmath", {"answer": 1e20}), ("openmath", {"answer": 987654321.0}),
])
def test_target_round_trips_through_parser(task, row):
    assert T.parse_answer(task, T.format_target(task, row)) == T.gold_answer(task, row)


# --- parsing -------------------------------------------------------------------------------------------

def test_no_boxed_answer_is_a_format_failure():
    for task in ("arc", "squad", "openmath"):
        assert T.parse_answer(task, "The answer is B.") is None
        assert T.parse_answer(task, "") is None
        assert T.parse_answer(task, None) is None
        assert T.parse_answer(task, "\\boxed{B") is None  # unclosed (generation cut off)


def test_last_boxed_wins_and_nested_braces_balance():
    assert T.parse_answer("openmath", "first \\boxed{1} then \\boxed{\\frac{3}{4}}") == "0.75"
    assert T.parse_answer("openmath", "\\boxed{\\dfrac{1}{2}} and a cut-off \\boxed{7") == "0.5"
    assert T.parse_answer("squad", "\\boxed{\\text{f}(x)}") == "\\text{f}(x)"
    assert T.parse_answer("squad", "\\boxed{a \\} b}") == "a \\} b"  # an escaped brace is literal


@pytest.mark.parametrize("text,expected", [
    ("\\boxed{B}", "B"), ("\\boxed{(B)}", "B"), ("\\boxed{B.}", "B"), ("\\boxed{b}", "B"),
    ("\\boxed{B) steam}", "B"), ("\\boxed{B. steam}", "B"), ("\\boxed{\\text{B}}", "B"), ("\\boxed{ D }", "D"),
    ("\\boxed{1}", "A"), ("\\boxed{4}", "D"), ("\\boxed{Option C}", "C"),
    ("\\boxed{Bacteria}", None), ("\\boxed{a ball}", None), ("\\boxed{}", None), ("\\boxed{9}", None),
])
def test_mcq_parsing(text, expected):
    assert T.parse_answer("arc", text) == expected


@pytest.mark.parametrize("text,expected", [
    ("\\boxed{Paris}", "Paris"), ("\\boxed{  the Normans }", "the Normans"),
    ("\\boxed{unanswerable}", ""), ("\\boxed{Unknown}", ""), ("\\boxed{No answer.}", ""), ("\\boxed{none}", ""),
    ("\\boxed{null}", ""), ("\\boxed{N/A}", ""), ("\\boxed{empty}", ""), ("\\boxed{}", ""),
])
def test_squad_parsing(text, expected):
    assert T.parse_answer("squad", text) == expected


@pytest.mark.parametrize("text,expected", [
    ("\\boxed{1,234}", "1234"), ("\\boxed{\\$5}", "5"), ("\\boxed{$5}", "5"), ("\\boxed{5.0}", "5"),
    ("\\boxed{\\frac{3}{4}}", "0.75"), ("\\boxed{\\dfrac{3}{4}}", "0.75"), ("\\boxed{-\\frac{1}{2}}", "-0.5"),
    ("\\boxed{-2}", "-2"), ("\\boxed{3/4}", "0.75"), ("\\boxed{50\\%}", "50"), ("\\boxed{2\\frac{1}{2}}", "2.5"),
    ("\\boxed{x = 12}", "12"), ("\\boxed{15 \\text{ cm}}", "15"), ("\\boxed{90^\\circ}", "90"), ("\\boxed{0.10}", "0.1"),
    ("\\boxed{\\sqrt{2}}", None), ("\\boxed{(1, 2)}", None), ("\\boxed{1,2}", None), ("\\boxed{3/0}", None),
    ("\\boxed{}", None), ("\\boxed{x+1}", None),
])
def test_numeric_parsing(text, expected):
    assert T.parse_answer("openmath", text) == expected


def test_gold_answers_normalise_like_predictions():
    assert T.gold_answer("arc", {"answer": "2"}) == "B"
    assert T.gold_answer("squad", {"answer": float("nan")}) == ""
    assert T.gold_answer("openmath", {"answer": 19600.0}) == "19600"
    assert T.gold_answer("openmath", {"answer": float("nan")}) is None


def test_answer_closed():
    assert not T.answer_closed("")
    assert not T.answer_closed("Let me think")
    assert not T.answer_closed("\\boxed{\\frac{3}{4}")
    assert T.answer_closed("\\boxed{\\frac{3}{4}}")
    assert T.answer_closed("so \\boxed{B} and more")
