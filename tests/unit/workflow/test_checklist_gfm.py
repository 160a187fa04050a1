"""Checklists read exactly as GitHub renders them: a differential test against cmark-gfm.

Debian's `cmark-gfm -e tasklist` (the C library GitHub's renderer is built on) is the reference. For
every file, generated or shipped, either wf refuses it (a ChecklistError: exit 2 naming the file and
the line) or the items it reads, (line, id, mark), are exactly the checkboxes cmark-gfm draws. A file
wf reads one way and a reviewer sees another is the bug this test exists to catch: a gate passing
on a box nobody sees ticked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mlflow_core.errors import ChecklistError
from mlflow_core.workflow.checklist import _META, _parse_meta, parse_checklist_text, set_marks
from tests.reference_tools import NS, cmark_gfm_tree, start_line

REPO = Path(__file__).resolve().parents[3]


def gfm_checkboxes(text: str) -> list[tuple[int, str | None, bool]]:
    """(line, id, ticked) of every checkbox cmark-gfm renders, the id read from the comment that ends
    the first line of the box's paragraph, as wf reads it."""
    boxes = []
    for node in cmark_gfm_tree(text).iter(f"{NS}tasklist"):
        first = next(iter(node), None)
        item_id = None
        if first is not None and first.tag == f"{NS}paragraph":
            inline = []
            for child in first:
                if child.tag in (f"{NS}softbreak", f"{NS}linebreak"):
                    break
                inline.append(child)
            while inline and inline[-1].tag == f"{NS}text" and not (inline[-1].text or "").strip():
                inline.pop()
            if inline and inline[-1].tag == f"{NS}html_inline":
                meta = _META.match(inline[-1].text or "")
                item_id = _parse_meta(meta.group("meta")).get("id") if meta else None
        boxes.append((start_line(node), item_id, node.get("completed") == "true"))
    return boxes


def wf_items(text: str, known_checks: set[str] | None = None) -> list[tuple[int, str, bool]] | None:
    """(line, id, ticked) of the items wf reads, or None when it refuses the file."""
    try:
        checklist = parse_checklist_text(text, Path("c.md"), "c", known_checks)
    except ChecklistError as exc:
        assert str(exc).startswith("c.md:\n  - line "), str(exc)  # the file and a line, always
        return None
    return [(item.line, item.id, item.checked) for item in checklist.items]


def assert_agrees(text: str) -> list[tuple[int, str, bool]] | None:
    items = wf_items(text)
    if items is not None:
        assert items == gfm_checkboxes(text), f"wf reads {items}, GitHub renders {gfm_checkboxes(text)}:\n{text!r}"
    return items


# -- the cases a new user ran into, and the corner cases of each parser ------------------------------

ITEM = "- [x] Results reviewed <!-- id: results_reviewed -->"
NAMED = {
    "indented as code": f"# C\n\n    {ITEM}\n",
    "tab-indented": f"# C\n\n\t{ITEM}\n",
    "many spaces after the dash": "# C\n\n-     [x] Results reviewed <!-- id: results_reviewed -->\n",
    "in an HTML block": f"# C\n\n<div>\n{ITEM}\n</div>\n",
    "in a multi-line HTML comment": f"# C\n\n<!--\n{ITEM}\n-->\n",
    "four-backtick fence holding a three-backtick line": f"# C\n\n````\n```\n{ITEM}\n````\n",
    "unclosed fence": f"# C\n\n~~~\n{ITEM}\n",
    "block quote": f"# C\n\n> {ITEM}\n",
    "lazy line under a quote": f"> quoted\n{ITEM}\n",
    "box on the line under the marker": "-\n  [x] Results reviewed <!-- id: results_reviewed -->\n",
    "an x further on ticks an open box": "- [ ] Check [x] marks <!-- id: a -->\n",
    "number-colon line ticks the item above": "- Intro <!-- id: a -->\n\n  1: [x] aside\n",
    "nested list on the box's line": "- [x] - sub <!-- id: a -->\n",
    "heading after the box": "- [x] # Title <!-- id: a -->\n",
    "code after the box": "- [x]     code <!-- id: a -->\n",
    "tabs after the box": "- [x]\t\tcode <!-- id: a -->\n",
    "nbsp after the dash": "-\u00a0[x] Results <!-- id: a -->\n",
    "nbsp after the box": "- [x]\u00a0Results <!-- id: a -->\n",
    "line separator inside": "- [x] a\u2028b <!-- id: a -->\n- [ ] c <!-- id: c -->\n",
    "ordered list not starting at 1 under prose": "Prose\n2. [x] Results <!-- id: a -->\n",
    "continuation line that looks like an item": "- [x] a <!-- id: a -->\n[x] b <!-- id: b -->\n",
    "escaped comment": "- [x] a \\<!-- id: a -->\n",
    "comment in code span": "- [x] a `<!-- id: a -->`\n",
    "CRLF": "# C\r\n\r\n- [x] a <!-- id: a -->\r\n- [ ] b <!-- id: b -->\r\n",
    "lone CR": "# C\r\r- [x] a <!-- id: a -->\r- [ ] b <!-- id: b -->\r",
    "form feed": "- [x] a <!-- id: a -->\x0c\n- [ ] b <!-- id: b -->\n",
    "table around": "| a | b |\n| - | - |\n| - [x] c <!-- id: c --> | d |\n\n- [x] e <!-- id: e -->\n",
    "textarea (an HTML block that changed between CommonMark versions)":
        "<textarea>\n\n- [x] a <!-- id: a -->\n\n</textarea>\n",
    "upper-case X": "* [X] a <!-- id: a -->\n1. [x] b <!-- id: b -->\n2) [ ] c <!-- id: c -->\n",
    "nested": "- [ ] a <!-- id: a -->\n  - [x] b <!-- id: b -->\n    1. [x] c <!-- id: c -->\n",
    "loose list": "- [x] a <!-- id: a -->\n\n- [ ] b <!-- id: b -->\n\n  more about b\n",
    "text after the comment": "- [x] a <!-- id: a --> more\n",
}
# What wf must read in the cases GitHub renders as real boxes; every other named case is refused.
READ = {
    "lazy line under a quote": [(2, "results_reviewed", True)],  # a list item ends the quote
    "line separator inside": [(1, "a", True), (2, "c", False)],  # U+2028 ends no line in Markdown
    "form feed": [(1, "a", True), (2, "b", False)],  # \f is whitespace, not a line end
    "CRLF": [(3, "a", True), (4, "b", False)],
    "lone CR": [(3, "a", True), (4, "b", False)],
    "upper-case X": [(1, "a", True), (2, "b", True), (3, "c", False)],
    "nested": [(1, "a", False), (2, "b", True), (3, "c", True)],
    "loose list": [(1, "a", True), (3, "b", False)],
}


@pytest.mark.parametrize("name", list(NAMED))
def test_named_cases_read_as_github_renders_them_or_are_refused(name):
    items = assert_agrees(NAMED[name])
    assert items == READ.get(name), f"{name}: wf reads {items}"


def test_the_shipped_checklists_read_as_github_renders_them():
    for path in sorted((REPO / "checklists").glob("*.md")):
        text = path.read_text(encoding="utf-8")
        items = assert_agrees(text)
        assert items and len(items) == len(gfm_checkboxes(text)) == text.count("<!-- id:"), path.name


# -- generated files ---------------------------------------------------------------------------------

# A file is a run of well-formed items and plain lines, then up to four changes: a part of an item
# (its indentation, marker, box, text, comment) or a whole plain line swapped for one of the variants
# below. Most files hold several boxes, and each change is tried on its own as well as with others.
USUAL = {"indent": "", "marker": "-", "after_marker": " ", "after_box": " ", "text": "Results reviewed",
         "comment": " <!-- id: {id} -->"}
VARIANTS = {
    "indent": ["", " ", "  ", "   ", "    ", "\t", "  \t", "      ", "> ", ">", "> > ", ">  - ", "  - ", "    - "],
    "marker": ["-", "*", "+", "1.", "1)", "2.", "10.", "1234567890.", "", "1:", "a.", "--", "- -"],
    "after_marker": [" ", "  ", "   ", "\t", "", "     ", "\u00a0", " \t", "\t\t"],
    "box": ["[ ]", "[x]", "[X]", "[]", "[ x]", "[\t]", "[xx]", "[-]", "[x ]", "[\u00a0]", "[*]"],
    "after_box": [" ", "  ", "   ", "    ", "     ", "\t", "\t\t", " \t", "\u00a0", "\u2003", "\u3000", "",
                  "\x0b"],
    "text": ["Results reviewed", "Check [x] marks", "Check [X]", "# Title", "- sub", "> quote", "`code`",
             "<b>bold</b>", "<div>", "***", "2024. Release", "a\u00a0b", "**done**", "|cell|", "", "\\[x] escaped",
             "[link](x.md)", "~~struck~~", "```", "=== ", "+1"],
    "comment": [" <!-- id: {id} -->", " <!-- id: {id}; auto: run_completed -->", "<!--id:{id}-->",
                " <!-- id: {id} --> after", "", " <!-- note -->", " <!-- id: {id} -- -->", " <!-- id: {id} -->  ",
                " `<!-- id: {id} -->`", " \\<!-- id: {id} -->", " <!-- id: {id} -->\x0c", " <!-- id: {id} --->",
                " <!-- id: {id} -->\\", " <!-- id: {id}\n  -->"],
    "line": ["", "# Title", "## Section", "Prose with [1] and [x] in it.", "  continued text", "```", "````",
             "~~~", "```python", "   ```", "    ```", "<div>", "</div>", "<details>", "<!--", "-->",
             "<!-- a note -->", "<pre>", "</pre>", "<textarea>", "<script>", "---", "***", "===", "| a | b |",
             "| - | - |", "    indented code", "\tindented code", "> quoted", ">", "- plain item", "1. plain item",
             "-", "Text\u2028more", "<!-- id: stray -->", "[x]: https://example.org", "\\", "  ", "\u00a0"],
}
PLAIN = ["", "", "# Title", "## Section", "Some prose about the phase."]


@st.composite
def checklist_files(draw) -> str:
    count = draw(st.integers(1, 12))
    lines: list[dict[str, str] | str] = []
    for number in range(count):
        if draw(st.integers(0, 3)):
            lines.append({**USUAL, "box": draw(st.sampled_from(["[ ]", "[x]", "[X]"])),
                          "comment": USUAL["comment"].format(id=f"i{number}")})
        else:
            lines.append(draw(st.sampled_from(PLAIN)))
    for _ in range(draw(st.integers(0, 4))):
        index = draw(st.integers(0, count - 1))
        if isinstance(lines[index], dict):
            part = draw(st.sampled_from(sorted(set(VARIANTS) - {"line"})))
            lines[index][part] = draw(st.sampled_from(VARIANTS[part])).format(id=f"i{index}")
        else:
            lines[index] = draw(st.sampled_from(VARIANTS["line"]))
    text = [line if isinstance(line, str) else "".join(line[part] for part in ITEM_PARTS) for line in lines]
    ending = draw(st.sampled_from(["\n", "\n", "\n", "\r\n", "\r"]))
    return ending.join(text) + draw(st.sampled_from([ending, ""]))


ITEM_PARTS = ("indent", "marker", "after_marker", "box", "after_box", "text", "comment")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(checklist_files())
@example(NAMED["four-backtick fence holding a three-backtick line"])
@example(NAMED["in a multi-line HTML comment"])
@example(NAMED["number-colon line ticks the item above"])
def test_generated_files_read_as_github_renders_them_or_are_refused(text):
    assert_agrees(text)


@settings(max_examples=150, deadline=None)
@given(checklist_files(), st.data())
def test_tick_rewrites_one_mark_and_github_sees_the_change(tmp_path_factory, text, data):
    items = wf_items(text)
    if not items:
        return
    path = tmp_path_factory.mktemp("tick") / "c.md"
    path.write_bytes(text.encode("utf-8"))
    _, item_id, checked = data.draw(st.sampled_from(items))
    set_marks(path, {item_id: not checked})
    after = path.read_bytes().decode("utf-8")
    expected = [(n, i, (not c) if i == item_id else c) for n, i, c in items]
    assert assert_agrees(after) == expected
    assert len(after) == len(text) and sum(a != b for a, b in zip(after, text)) == 1
