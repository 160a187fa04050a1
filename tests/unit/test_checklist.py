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
    "1. [X] Model card reviewed <!-- id: model_card_reviewed -->",
    "[x] Model card reviewed <!-- id: model_card_reviewed -->",  # no list marker
    "Model card reviewed <!-- id: model_card_reviewed -->",  # an item's id on a line that is no item
    "- [x] <!-- id: model_card_reviewed -->",  # no text
], ids=["no-space-after", "no-space-before", "space-in-box", "numbered", "no-marker", "id-only", "no-text"])
def test_a_line_that_looks_like_an_item_but_is_not_one_is_an_error(tmp_path, line):
    """A mistyped item must not vanish from its gate: the file and the line are named."""
    with pytest.raises(ChecklistError) as exc:
        parse_checklist_text(f"# C\n\n{line}\n", tmp_path / "c.md", "c")
    assert f"{tmp_path / 'c.md'}" in str(exc.value) and "line 3:" in str(exc.value)


def test_links_and_code_blocks_are_not_items(tmp_path):
    text = ("# C\n- [the docs](https://example.org) say so\nSee [1] and [x].\n```\n- [x]example <!-- id: a -->\n```\n"
            "- [ ] Real <!-- id: real -->\n")
    assert [i.id for i in parse_checklist_text(text, tmp_path / "c.md", "c").items] == ["real"]
