from pathlib import Path

import pytest

from mlflow_core.errors import ChecklistError
from mlflow_core.workflow.checklist import parse_checklist, parse_checklist_text, set_marks

TEXT = """# Demo

Intro text that must survive.

- [ ] First thing <!-- id: first; auto: run_completed -->
- [x] Second thing <!-- id: second -->
* [X] Third <!-- id: third -->
- [ ] not a gate item line without comment is an error
"""


def test_items_parse_with_kind_and_line(tmp_path):
    cl = parse_checklist_text(TEXT.rsplit("\n", 2)[0] + "\n", tmp_path / "demo.md", "demo")
    assert cl.title == "Demo"
    assert [(i.id, i.kind, i.checked, i.line) for i in cl.items] == [
        ("first", "auto", False, 5), ("second", "manual", True, 6), ("third", "manual", True, 7)]


@pytest.mark.parametrize("line, message", [
    ("- [ ] no id here", "line 1: task item has no id"),
    ("- [ ] x <!-- id: Bad-Id -->", "must be lower_snake_case"),
    ("- [ ] x <!-- id: a -->\n- [ ] y <!-- id: a -->", "line 2: id 'a' already used on line 1"),
    ("- [ ] x <!-- id: a; auto: no_such_check -->", "unknown auto check 'no_such_check'"),
    ("- [ ] x <!-- id: a; colour: red -->", "unknown key(s) colour"),
])
def test_malformed_items_name_the_file_and_line(tmp_path, line, message):
    with pytest.raises(ChecklistError) as exc:
        parse_checklist_text(line + "\n", tmp_path / "c.md", "c", known_checks={"run_completed"})
    assert str(tmp_path / "c.md") in str(exc.value) and message in str(exc.value)


def test_set_marks_touches_only_named_items(tmp_path):
    path = tmp_path / "demo.md"
    path.write_bytes(TEXT.rsplit("\n", 2)[0].replace("\n", "\r\n").encode() + b"\r\n")
    before = path.read_bytes()
    set_marks(path, {"first": True, "second": False})
    after = path.read_bytes()
    assert after.count(b"\r\n") == before.count(b"\r\n")
    assert b"- [x] First thing" in after and b"- [ ] Second thing" in after and b"* [X] Third" in after
    assert b"Intro text that must survive." in after
    cl = parse_checklist(path)
    assert [i.checked for i in cl.items] == [True, False, True]


def test_missing_checklist_is_bad_input(tmp_path):
    with pytest.raises(ChecklistError, match="checklist not found"):
        parse_checklist(Path(tmp_path / "none.md"))


@pytest.mark.parametrize("line", [
    "- [x]Model card reviewed <!-- id: model_card_reviewed -->",  # no space after the brackets
    "-[x] Model card reviewed <!-- id: model_card_reviewed -->",  # no space after the dash
    "* [ x] Model card reviewed <!-- id: model_card_reviewed -->",
    "[x] Model card reviewed <!-- id: model_card_reviewed -->",  # no list marker
    "Model card reviewed <!-- id: model_card_reviewed -->",  # an item's id on a line that is no item
    "- [x] <!-- id: model_card_reviewed -->",  # no text
    "> - [x] Model card reviewed <!-- id: model_card_reviewed -->",  # GitHub draws no box in a quote
    "    - [x] Model card reviewed <!-- id: model_card_reviewed -->",  # code
    "```\n- [x] Model card reviewed <!-- id: model_card_reviewed -->\n```",  # code, fenced
], ids=["no-space-after", "no-space-before", "space-in-box", "no-marker", "id-only", "no-text", "quoted",
        "indented-code", "fenced-code"])
def test_a_line_that_looks_like_an_item_but_is_not_one_is_an_error(tmp_path, line):
    """A mistyped item must not vanish from its gate: the file and the line are named."""
    with pytest.raises(ChecklistError) as exc:
        parse_checklist_text(f"# C\n\n{line}\n", tmp_path / "c.md", "c")
    assert f"{tmp_path / 'c.md'}" in str(exc.value) and ("line 3:" in str(exc.value) or "line 4:" in str(exc.value))
    assert "write it as '- [ ] Text <!-- id: some_id -->'" in str(exc.value) or "no text" in str(exc.value)


def test_links_and_prose_brackets_are_not_items(tmp_path):
    text = ("# C\n- [the docs](https://example.org) say so\nSee [1] and [x].\n```\nprint([1])\n```\n"
            "- [ ] Real <!-- id: real -->\n1. [x] Numbered <!-- id: numbered -->\n")
    checklist = parse_checklist_text(text, tmp_path / "c.md", "c")
    assert [(i.id, i.checked, i.line) for i in checklist.items] == [("real", False, 7), ("numbered", True, 8)]


def test_the_reason_a_line_is_no_item_is_named(tmp_path):
    text = ("# C\n\n```\n- [x] In code <!-- id: a -->\n```\n\n- [ ] See [x] <!-- id: b -->\n"
            "<div>\n\n-\u00a0[x] Spaced <!-- id: c -->\n- [x]Joined <!-- id: d -->\n")
    with pytest.raises(ChecklistError) as exc:
        parse_checklist_text(text, tmp_path / "c.md", "c")
    message = str(exc.value)
    assert ("line 4: '- [x] In code <!-- id: a -->' looks like a task item, but GitHub shows no checkbox for it "
            "(inside a fenced code block)") in message
    assert "line 8: raw HTML ('<div'…) may start a block" in message
    assert "line 10: '-\\xa0[x] Spaced <!-- id: c -->' looks like a task item, but GitHub shows no checkbox for it " \
           "(a no-break or other non-ASCII space where GitHub needs a plain space or a tab)" in message
    assert "line 11: '- [x]Joined <!-- id: d -->' looks like a task item, but GitHub shows no checkbox for it " \
           "(no space after the brackets)" in message
    assert "line 7: '- [ ] See [x] <!-- id: b -->': GitHub shows this box ticked whatever its mark, because the line holds '[x]' after it" in str(exc.value)
