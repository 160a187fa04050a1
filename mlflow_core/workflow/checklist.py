"""Checklists: GitHub-flavoured markdown task lists that render on GitHub and gate phases.

An item is a task-list line whose trailing HTML comment (invisible on GitHub) carries its stable id
and, for items the engine verifies, the name of the check:

    - [ ] Best checkpoint saved <!-- id: best_checkpoint_saved; auto: best_checkpoint_saved -->
    - [x] Results reviewed <!-- id: results_reviewed -->

Everything else in the file is left exactly as the person wrote it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mlflow_core.atomic import atomic_write_text
from mlflow_core.errors import ChecklistError

_TASK = re.compile(r"^(?P<lead>\s*[-*+]\s+\[)(?P<mark>[ xX])(?P<rest>\]\s+(?P<body>.*\S.*))$")
_META = re.compile(r"<!--\s*(?P<meta>.*?)\s*-->\s*$")
_ID = re.compile(r"^[a-z][a-z0-9_]*$")
# What a person meant as a task item, even when GitHub would not render it as one: a list marker (or
# none) and a short bracket ('-[x]', '- [x]Text', '* [ x]', '1. [X]', '[x] text'), or an item's id
# comment on a line that is not an item. Such a line is an error, never silently not an item: a
# mistyped item would otherwise vanish from its gate.
_TASK_LIKE = re.compile(r"^\s*(?:[-*+]|\d+[.)])?\s*\[[^\]]{0,3}\]")
_ID_COMMENT = re.compile(r"<!--\s*id\s*:")


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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ChecklistError(f"{path}: checklist not found.",
                             hint="`wf init` copies the checklists into the project.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ChecklistError(f"{path}: cannot be read ({exc}).") from None
    return parse_checklist_text(text, path, name or path.stem, known_checks)


def parse_checklist_text(text: str, path: Path, name: str, known_checks: set[str] | None = None) -> Checklist:
    items: list[ChecklistItem] = []
    seen: dict[str, int] = {}
    title = name
    problems: list[str] = []
    in_code = False
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith(("```", "~~~")):  # an example in a code block is not an item
            in_code = not in_code
            continue
        if in_code:
            continue
        if line.startswith("# ") and title == name:
            title = line[2:].strip()
        task = _TASK.match(line)
        if not task:
            if _TASK_LIKE.match(line) or _ID_COMMENT.search(line):
                problems.append(f"line {lineno}: looks like a task item but is not one: {line.strip()[:80]!r}; "
                                "write it as '- [ ] Text <!-- id: some_id -->' (a space inside the brackets "
                                "or an x, then a space and the text)")
            continue
        body = task.group("body")
        meta_match = _META.search(body)
        meta = _parse_meta(meta_match.group("meta")) if meta_match else {}
        item_text = body[: meta_match.start()].strip() if meta_match else body.strip()
        item_id = meta.get("id")
        if not item_text:
            problems.append(f"line {lineno}: task item has no text before its comment")
            continue
        if not item_id:
            problems.append(f"line {lineno}: task item has no id; add '<!-- id: some_id -->' at its end")
            continue
        if not _ID.match(item_id):
            problems.append(f"line {lineno}: id {item_id!r} must be lower_snake_case")
            continue
        if item_id in seen:
            problems.append(f"line {lineno}: id {item_id!r} already used on line {seen[item_id]}")
            continue
        unknown_keys = set(meta) - {"id", "auto"}
        if unknown_keys:
            problems.append(f"line {lineno}: unknown key(s) {', '.join(sorted(unknown_keys))} in the item's comment "
                            "(allowed: id, auto)")
        auto = meta.get("auto")
        if auto is not None and known_checks is not None and auto not in known_checks:
            problems.append(f"line {lineno}: unknown auto check {auto!r}; known checks: "
                            f"{', '.join(sorted(known_checks))}")
        seen[item_id] = lineno
        items.append(ChecklistItem(item_id, item_text, task.group("mark") != " ", auto, lineno))
    if problems:
        raise ChecklistError(f"{path}:\n" + "\n".join(f"  - {p}" for p in problems))
    return Checklist(name, path, title, tuple(items))


def _parse_meta(meta: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in meta.split(";"):
        if ":" in part:
            key, value = part.split(":", 1)
            out[key.strip()] = value.strip()
    return out


def set_marks(path: Path, marks: dict[str, bool]) -> None:
    """Rewrite the check marks of the items in `marks` (by id), atomically, touching nothing else."""
    text = path.read_bytes().decode("utf-8")  # not read_text: keep CRLF files CRLF
    out = []
    for line in text.splitlines(keepends=True):
        task = _TASK.match(line.rstrip("\r\n"))
        if task:
            meta_match = _META.search(task.group("body"))
            item_id = _parse_meta(meta_match.group("meta")).get("id") if meta_match else None
            if item_id in marks:
                ending = line[len(line.rstrip("\r\n")):]
                mark = "x" if marks[item_id] else " "
                line = f"{task.group('lead')}{mark}{task.group('rest')}{ending}"
        out.append(line)
    new_text = "".join(out)
    if new_text != text:
        atomic_write_text(path, new_text)
