"""Who put a waiver or an override on the record, as git saw it.

A waiver (`wf checklist waive`) and a gate override (`wf phase --override-gate`) say who made them in
.wf/state.json, a file anyone with write access can edit: a pull request can write a waiver under a
maintainer's name. In a git repository the commit that added the entry says who committed it. Every
listing of waivers and overrides (`wf gate check`, the summary, the pull-request comment) shows that
author beside the name the file claims and flags a mismatch, and `wf verify` fails on one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from mlflow_core.workflow.git import git
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.state import Event, ProjectState


@dataclass(frozen=True)
class OnRecord:
    kind: str  # waiver | override
    where: str  # the checklist item waived, or the phase entered with its gate closed
    by: str | None  # the name the state file claims
    time: str
    reason: str
    commit: str | None = None  # the commit that added the entry to .wf/state.json (None: not committed yet)
    author: str | None = None  # that commit's author, "Name <email>"
    mismatch: bool = False  # the author is not the person the entry names
    shallow: bool = False  # the adding commit is beyond a shallow clone's history: its author is unknown
    times: int = 1  # the same override given again (a phase retried with the same reason), shown once

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def shown(self) -> str:
        """'by Alice (committed by Alice <a@x> in 1a2b3c4d)', with a mismatch said plainly."""
        claimed = f"by {self.by or 'nobody named'}" + (f", {self.times} times from {self.time}" if self.times > 1 else "")
        if self.shallow:
            return f"{claimed} (who committed it is beyond this shallow clone's history: fetch it whole)"
        if self.commit is None:
            return f"{claimed} (not committed yet)"
        if self.mismatch:
            return f"{claimed} ⚠️ but committed by {self.author} in {self.commit[:8]}: not the person it names"
        return f"{claimed} (committed by {self.author} in {self.commit[:8]})"


def on_record(project: Project, state: ProjectState) -> list[OnRecord]:
    """Every waiver still in force and every gate override, with the commit that put it on the record."""
    entries: list[OnRecord] = []
    for checklist, items in _waivers_in_force(state).items():
        for item, event in items.items():
            entries.append(_entry(project, "waiver", f"{checklist} · {item}", event))
    overrides = [_entry(project, "override", f"{getattr(e, 'phase', '?')} entered with the {getattr(e, 'gate', '?')} "
                        "gate closed", e) for e in state.overrides()]
    return entries + _repeats_once(overrides)


def _repeats_once(entries: list[OnRecord]) -> list[OnRecord]:
    """An override given again and again (a phase retried with the same reason) is one entry, counted,
    when every repeat names the same person and was committed by the same author: a repeat that
    differs in either stays an entry of its own, so a mismatch is never folded away."""
    out: list[OnRecord] = []
    for entry in entries:
        same = out and all(getattr(out[-1], f) == getattr(entry, f)
                           for f in ("kind", "where", "by", "reason", "author", "mismatch", "shallow"))
        if same and (entry.commit is None) == (out[-1].commit is None):
            out[-1] = replace(out[-1], times=out[-1].times + 1)
        else:
            out.append(entry)
    return out


def _waivers_in_force(state: ProjectState) -> dict[str, dict[str, Event]]:
    names = {getattr(e, "checklist", None) for e in state.history if e.event == "checklist_waive"}
    return {name: state.waivers(name) for name in sorted(n for n in names if n)}


def _entry(project: Project, kind: str, where: str, event: Event) -> OnRecord:
    by, reason = getattr(event, "by", None), str(getattr(event, "reason", "") or "")
    by_name = by.get("name") if isinstance(by, dict) else by
    commit = _adding_commit(str(project.state_path), _as_in_file(event.time), _as_in_file(reason))
    if commit is None:
        return OnRecord(kind, where, by_name, event.time, reason)
    sha, name, email = commit
    if sha in _shallow_roots(str(project.state_path)):  # a clone's cut-off commit holds every line before it
        return OnRecord(kind, where, by_name, event.time, reason, shallow=True)
    named = (by_name or "").strip().casefold()
    mismatch = named not in (name.strip().casefold(), email.strip().casefold())
    return OnRecord(kind, where, by_name, event.time, reason, sha, f"{name} <{email}>", mismatch)


def _as_in_file(text: str) -> str:
    return json.dumps(text)[1:-1]  # as the JSON file holds it (escapes included)


@lru_cache(maxsize=256)
def _adding_commit(state_path: str, time: str, reason: str) -> tuple[str, str, str] | None:
    """The oldest commit whose change to the state file added both the entry's time and its reason
    (`git log -S`, the pickaxe, once for each); None outside git or before it was committed."""
    path = Path(state_path)
    lists = []
    for marker in (time, reason):
        if not marker:
            continue
        out = git(path.parent, "log", "--reverse", "--format=%H%x1f%an%x1f%ae", f"-S{marker}", "--", path.name)
        if out is None:
            return None
        lists.append([tuple(line.split("\x1f")) for line in out.splitlines() if line.count("\x1f") == 2])
    both = [c for c in lists[0] if all(c in other for other in lists[1:])] if lists else []
    return both[0] if both else None  # type: ignore[return-value]


@lru_cache(maxsize=16)
def _shallow_roots(state_path: str) -> frozenset[str]:
    """The commits a shallow clone was cut at (CI checkouts fetch one commit by default): a pickaxe
    finds every older line added there, by whoever made that commit."""
    folder = Path(state_path).parent
    out = git(folder, "rev-parse", "--git-path", "shallow")
    if not out:
        return frozenset()
    path = Path(out)
    path = path if path.is_absolute() else folder / path
    return frozenset(path.read_text().split()) if path.is_file() else frozenset()
