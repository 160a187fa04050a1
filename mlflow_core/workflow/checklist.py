"""Checklists: GitHub-flavoured markdown task lists that render on GitHub and gate phases.

An item is a task-list item whose trailing HTML comment (invisible on GitHub) carries its stable id
and, for items the engine verifies, the name of the check:

    - [ ] Best checkpoint saved <!-- id: best_checkpoint_saved; auto: best_checkpoint_saved -->
    - [x] Results reviewed <!-- id: results_reviewed -->

A gate is a promise to a reviewer who reads the file on GitHub, so an item is what GitHub renders as
a checkbox, and only that: the file is parsed with a CommonMark parser (markdown-it-py, with
mdit-py-plugins' task lists), never with a line regex, and a box counts only where GitHub's own
renderer (cmark-gfm's tasklist extension) draws one too. Where the two could disagree, the file is
refused rather than read one way: a line that looks like an item but renders as code, raw HTML, a
quote or plain text is an error naming the line and how to write it. The differential test against
`cmark-gfm -e tasklist` (tests/unit/workflow/test_checklist_gfm.py) holds the rules below to that.

Everything else in the file is left exactly as the person wrote it; `set_marks` rewrites one
character of an item's own source line.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from mlflow_core.atomic import atomic_write_text
from mlflow_core.errors import ChecklistError

# Lines as CommonMark counts them: \n, \r\n or \r end a line, nothing else (str.splitlines would also
# split at \x0c, \x85 or U+2028, and every line number after one would be off).
_LINE_END = re.compile(r"\r\n|\r|\n")
# The opening line of an item as cmark-gfm's tasklist scanner accepts it (extensions/ext_scanners.re:
# spacechar* ("-"|"+"|"*"|[0-9]+.) spacechar+ ("[ ]"|"[x]") spacechar+), read from the first column
# of the line: so an item in a block quote, or one whose list marker sits on the line above, is no
# checkbox on GitHub.
_GFM_ITEM_LINE = re.compile(r"^(?P<lead>[ \t\v\f]*(?:[-+*]|[0-9]{1,9}[.)])[ \t\v\f]+\[)(?P<mark>[ xX])\][ \t\v\f]")
_META = re.compile(r"^<!--\s*(?P<meta>.*?)\s*-->$", re.DOTALL)
_ID = re.compile(r"^[a-z][a-z0-9_]*$")
# What a person meant as a task item, even when GitHub would not render it as one: list markers (or
# none, or '>' quotes) and a short bracket ('-[x]', '- [x]Text', '* [ x]', '> - [x]', '[x] text',
# '1: [x]'), or an item's id comment on a line that is no item. Such a line is an error, never
# silently not an item: a mistyped item would otherwise vanish from its gate. It is wider than the
# scanner above on purpose: every line cmark-gfm draws a box for matches it.
_TASK_LIKE = re.compile(r"^[\s>]*(?:(?:[-*+]|\d+(?!\d)[^-*+\d\s\[]?)\s*)*\[[^\]\n]{0,3}\]")  # one parse per line
_ID_COMMENT = re.compile(r"<!--\s*id\s*:")
# After the box, cmark-gfm goes on parsing the rest of the line as blocks, markdown-it as the item's
# paragraph: text that would open a block there ('- [x] # title', '- [x] - sub', '- [x] > quote',
# four spaces of code) is read differently by the two, so it is refused.
_BLOCK_START = re.compile(r"^(?:(?:#{1,6}(?:[ \t]|$)|[-+*](?:[ \t]|$)|\d{1,9}[.)](?:[ \t]|$)|>|`{3}|~{3}|<"
                          r"|(?:[-*_][ \t]*){3,}$|=+[ \t]*$|\|))")
# A line that may open a raw HTML block (CommonMark's kinds 1 and 3-7: '<div>', '</pre>', '<details>',
# '<?…', '<!DOCTYPE'): where such a block ends differs between CommonMark versions and between
# markdown-it and cmark-gfm (an unpaired '</pre>' swallows every item below it on GitHub, and none
# here), so a checklist holds none. HTML comments ('<!--', kind 2) end at '-->' in all of them.
_HTML_BLOCK_START = re.compile(r"^[\s>]*(?:(?:[-*+]|\d{1,9}[.)])\s+)*"
                               r"(?P<tag><(?:/?[A-Za-z][A-Za-z0-9-]*(?=[\s>]|/>|$)|\?|![A-Za-z]|!\[CDATA\[))")
_HOW = "write it as '- [ ] Text <!-- id: some_id -->' at the start of a line (a space or an x in the brackets)"
_CONTAINERS = {"fence": "inside a fenced code block", "code_block": "indented four or more spaces: code",
               "html_block": "inside an HTML block", "blockquote_open": "inside a block quote"}


@dataclass(frozen=True)
class ChecklistItem:
    id: str
    text: str
    checked: bool
    auto: str | None  # name of the engine check, None for a manual item
    line: int  # 1-based

    @property
    def kind(self) -> str:
        return "auto" if self.auto else "manual"


@dataclass(frozen=True)
class Checklist:
    name: str
    path: Path
    title: str
    items: tuple[ChecklistItem, ...]

    def item(self, item_id: str) -> ChecklistItem:
        for item in self.items:
            if item.id == item_id:
                return item
        known = ", ".join(i.id for i in self.items)
        raise ChecklistError(f"{self.path}: no item with id {item_id!r}; items are: {known}.")


def parse_checklist(path: Path, name: str | None = None, known_checks: set[str] | None = None) -> Checklist:
    return parse_checklist_text(_read(path), path, name or path.stem, known_checks)


def _read(path: Path) -> str:
    # a checklist is the project's own file: a link to a file outside it (a pull request can commit
    # one) is refused unread, so no line of that file reaches a message or a CI log
    root = path.parent.parent.resolve()  # checklists/ sits in the project's root
    if path.is_symlink() and root not in path.resolve().parents:
        raise ChecklistError(f"{path}: a link to {path.resolve()}, outside the project; a checklist is never read "
                             "from outside it.", hint="Replace the link with the checklist's own text.")
    try:
        return path.read_bytes().decode("utf-8")  # not read_text: CRLF stays CRLF for set_marks
    except FileNotFoundError:
        raise ChecklistError(f"{path}: checklist not found.",
                             hint="`wf init` copies the checklists into the project.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ChecklistError(f"{path}: cannot be read ({exc}).") from None


@functools.cache
def _markdown():
    from markdown_it import MarkdownIt
    from mdit_py_plugins.tasklists import tasklists_plugin

    # CommonMark with raw HTML (the id comments), GFM's tables and strikethrough, and task lists:
    # what GitHub renders, less autolinks, which change no block.
    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).use(tasklists_plugin)


@dataclass(frozen=True)
class _Box:
    """A checkbox as markdown-it renders it: the line its list item opens on, and its paragraph."""

    line: int  # 0-based
    checked: bool
    inline: object  # the paragraph's inline token, the box already taken off its content
    quoted: bool
    same_line: bool  # the paragraph starts on the list marker's line


@dataclass(frozen=True)
class _Parsed:
    boxes: list[_Box]
    where: dict[int, str]  # line (0-based) → the container that keeps it from being an item
    title: str | None  # the first level-1 heading


def _parse(text: str) -> _Parsed:
    tokens = _markdown().parse(text)
    boxes, where, open_quotes, title = [], {}, 0, None
    for index, token in enumerate(tokens):
        open_quotes += {"blockquote_open": 1, "blockquote_close": -1}.get(token.type, 0)
        if token.map is not None and token.type in _CONTAINERS:
            for line in range(*token.map):  # later tokens are inner ones: the innermost container wins
                where[line] = _CONTAINERS[token.type]
        if token.type == "heading_open" and token.tag == "h1" and title is None:
            title = tokens[index + 1].content.strip() or None
        first = (token.children or [None])[0]
        if (token.type == "inline" and first is not None and first.type == "html_inline"
                and 'class="task-list-item-checkbox"' in first.content):
            item = tokens[index - 2]
            boxes.append(_Box(item.map[0], "checked=" in first.content, token, open_quotes > 0,
                              tokens[index - 1].map[0] == item.map[0]))
    return _Parsed(boxes, where, title)


def parse_checklist_text(text: str, path: Path, name: str, known_checks: set[str] | None = None) -> Checklist:
    lines = _LINE_END.split(text)
    parsed = _parse(text)
    items: list[ChecklistItem] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    for box in parsed.boxes:
        lineno = box.line + 1
        problem, item = _item_of(box, lines[box.line], lineno)
        if problem:
            problems.append(problem)
            continue
        if item.id in seen:
            problems.append(f"line {lineno}: id {item.id!r} already used on line {seen[item.id]}")
            continue
        if item.auto is not None and known_checks is not None and item.auto not in known_checks:
            problems.append(f"line {lineno}: unknown auto check {item.auto!r}; known checks: "
                            f"{', '.join(sorted(known_checks))}")
        seen[item.id] = lineno
        items.append(item)
    box_lines = {box.line for box in parsed.boxes}
    for index, line in enumerate(lines):
        html = _HTML_BLOCK_START.match(line)
        if html:
            problems.append(f"line {index + 1}: raw HTML ({html.group('tag')!r}…) may start a block that GitHub "
                            "and other Markdown readers end on different lines, so the items after it could "
                            "read one way here and another on GitHub; a checklist holds Markdown only (an HTML "
                            "comment is fine)")
            continue
        if index in box_lines or not (_TASK_LIKE.match(line) or _ID_COMMENT.search(line)):
            continue
        why = parsed.where.get(index) or _typo(line)
        problems.append(f"line {index + 1}: {line.strip()[:80]!r} looks like a task item, but GitHub shows no "
                        f"checkbox for it ({why}); {_HOW}")
    if problems:
        raise ChecklistError(f"{path}:\n" + "\n".join(f"  - {p}" for p in sorted(problems, key=_line_of)))
    return Checklist(name, path, parsed.title or name, tuple(items))


def _typo(line: str) -> str:
    """Why a line that looks like an item is none, in the words of the usual slip."""
    bracket = re.search(r"\[([^\]\n]{0,3})\]", line)
    if bracket is None or not _TASK_LIKE.match(line):
        return "an item's id comment on a line that is no task item"
    before = line[: bracket.start()]
    marker = re.search(r"(?:[-*+]|\d[.)])$", before.rstrip())
    if not before.replace(">", "").strip():
        return "no list marker ('- ') before the brackets"
    if marker is None:
        return "the brackets do not follow a list marker"
    if not before[-1:].isspace():
        return "no space between the list marker and the brackets"
    if re.search(r"[^\S \t]", before + line[bracket.end():bracket.end() + 1]):
        return "a no-break or other non-ASCII space where GitHub needs a plain space or a tab"
    if bracket.group(1) not in (" ", "x", "X"):
        return f"the brackets hold {bracket.group(1)!r}, not one space or an x"
    if not line[bracket.end():bracket.end() + 1].isspace():
        return "no space after the brackets"
    return "it continues the paragraph above it: leave a blank line before it"


def _line_of(problem: str) -> int:
    return int(problem.split(":", 1)[0].removeprefix("line "))


def _columns(text: str, start: int = 0) -> int:
    """The width of `text` from column `start`, tabs to the next multiple of 4 (CommonMark's rule)."""
    column = start
    for char in text:
        column = column + 4 - column % 4 if char == "\t" else column + 1
    return column - start


def _item_of(box: _Box, source: str, lineno: int) -> tuple[str | None, ChecklistItem | None]:
    """The item a checkbox is, or why it cannot be read as GitHub shows it."""
    def refused(why: str) -> tuple[str, None]:
        return f"line {lineno}: {source.strip()[:80]!r}: {why}; {_HOW}", None

    opening = _GFM_ITEM_LINE.match(source)
    if box.quoted:
        return refused("GitHub shows no checkbox for a task item inside a block quote")
    if not box.same_line or opening is None:
        return refused("GitHub shows no checkbox here: the brackets must follow the list marker on its line")
    if (opening.group("mark") in "xX") != box.checked:
        return refused("the box reads differently to GitHub")  # not reached unless a parser changes
    after_box = source[len(opening.group("lead")) + 2:]
    if after_box.strip().startswith("<!--"):
        return f"line {lineno}: task item has no text before its comment", None
    if "[x]" in after_box or "[X]" in after_box:  # cmark-gfm ticks a box whose line holds '[x]' anywhere
        return refused("GitHub shows this box ticked whatever its mark, because the line holds '[x]' after "
                       "it; reword that '[x]'")
    space = len(after_box) - len(after_box.lstrip(" \t\v\f"))
    if (_columns(after_box[:space], _columns(source[: len(opening.group("lead")) + 2])) >= 4
            or _BLOCK_START.match(after_box[space:])):
        return refused("the text after the box starts a block (a heading, list, quote, code or HTML), "
                       "which GitHub renders apart from the box")
    first_line = []
    for child in box.inline.children[1:]:
        if child.type in ("softbreak", "hardbreak"):
            break
        first_line.append(child)
    while first_line and first_line[-1].type == "text" and not first_line[-1].content.strip():
        first_line.pop()
    comment = first_line[-1] if first_line and first_line[-1].type == "html_inline" else None
    meta_match = _META.match(comment.content) if comment is not None else None
    if meta_match is None:
        return f"line {lineno}: task item has no id; add '<!-- id: some_id -->' at the end of its line", None
    meta = _parse_meta(meta_match.group("meta"))
    item_id, auto = meta.get("id"), meta.get("auto")
    item_text = " ".join(source[: source.rfind(comment.content)][len(opening.group("lead")) + 2:].split())
    if not item_text:
        return f"line {lineno}: task item has no text before its comment", None
    if not item_id:
        return f"line {lineno}: task item has no id; add '<!-- id: some_id -->' at the end of its line", None
    for key, value in (("id", item_id), ("auto check", auto)):
        if value is not None and not _ID.match(value):
            return f"line {lineno}: {key} {value!r} must be lower_snake_case", None
    unknown_keys = set(meta) - {"id", "auto"}
    if unknown_keys:
        return (f"line {lineno}: unknown key(s) {', '.join(sorted(unknown_keys))} in the item's comment "
                "(allowed: id, auto)"), None
    return None, ChecklistItem(item_id, item_text, box.checked, auto, lineno)


def _parse_meta(meta: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in meta.split(";"):
        if ":" in part:
            key, value = part.split(":", 1)
            out[key.strip()] = value.strip()
    return out


def set_marks(path: Path, marks: dict[str, bool]) -> None:
    """Rewrite the check marks of the items in `marks` (by id), atomically: one character of each
    item's own source line changes, nothing else (CRLF stays CRLF)."""
    text = _read(path)
    checklist = parse_checklist_text(text, path, path.stem)
    pieces = _LINE_END.split(text)
    endings = _LINE_END.findall(text)
    for item in checklist.items:
        if item.id in marks and marks[item.id] != item.checked:
            line = pieces[item.line - 1]
            lead = _GFM_ITEM_LINE.match(line).group("lead")
            pieces[item.line - 1] = f"{lead}{'x' if marks[item.id] else ' '}{line[len(lead) + 1:]}"
    new_text = "".join(piece + ending for piece, ending in zip(pieces, [*endings, ""]))
    if new_text != text:
        atomic_write_text(path, new_text)
