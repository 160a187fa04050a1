"""`.wf/state.json`: where the project stands, and an append-only history of what happened.

Versioned (`schema_version`), validated on load (a hand-broken file is exit 2 naming the field),
written atomically, and changed only under the project lock (workflow/lock.py).
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from mlflow_core import __version__
from mlflow_core.atomic import atomic_write_json
from mlflow_core.errors import StateError
from mlflow_core.workflow import jsontext
from mlflow_core.workflow.project import Project

SCHEMA_VERSION = 1


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _known_phase(value: str | None) -> str | None:
    """A phase name as wf writes it (the message names the field; the loader names the file)."""
    from mlflow_core.workflow.phases import PHASE_ORDER  # phases reads the facts, which read this module

    if value is not None and value not in PHASE_ORDER:
        raise ValueError(f"{value!r} is not a phase (phases: {', '.join(PHASE_ORDER)})")
    return value


KnownPhase = Annotated[str, AfterValidator(_known_phase)]


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    run_id: str
    phase: KnownPhase
    status: str  # running, completed, early_stopped, failed_nan, failed_criteria, crashed, interrupted
    started_at: str
    finished_at: str | None = None
    dir: str
    passed: bool | None = None  # the phase's success criteria
    summary: dict[str, Any] = Field(default_factory=dict)
    entered_from: str | None = None  # the phase whose gate admitted the run (None: setup, or an older wf)
    mlflow_run_id: str | None = None  # its MLflow run (monitoring.mlflow), continued by --resume
    mlflow_uri: str | None = None  # the store that run is in


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phase: str  # the phase the decision was made in
    choice: str  # finalize, diagnose, optimize, rebaseline
    next_phase: str
    reason: str | None = None
    time: str
    after_run: str | None = None  # the run of `phase` the decision was made on
    shortfall: str | None = None  # finalizing a run that misses validation.target: by how much (with a reason)


class Event(BaseModel):
    model_config = ConfigDict(extra="allow")
    time: str
    event: Literal["init", "phase_started", "phase_finished", "gate_checked", "gate_override",
                   "decision", "checklist_tick", "checklist_untick", "report_rendered", "diagnosis",
                   "test_evaluated", "phase_resumed", "job_requeued", "checklist_waive", "checklist_unwaive",
                   "run_selected", "registered", "release"]


class ProjectState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = SCHEMA_VERSION
    wf_version: str = __version__
    created_at: str = Field(default_factory=now_iso)
    # made by `wf init` and carried by every evidence: evidence copied from another project is refused
    project_id: str | None = None
    current_phase: KnownPhase | None = None
    entered_from: dict[str, str | None] = Field(default_factory=dict)
    decision: Decision | None = None
    runs: list[RunRecord] = Field(default_factory=list)
    history: list[Event] = Field(default_factory=list)

    def record(self, event: str, **fields: Any) -> Event:
        entry = Event(time=now_iso(), event=event, **fields)  # type: ignore[arg-type]
        self.history.append(entry)
        return entry

    def latest_run(self, phase: str, *, finished: bool = False) -> RunRecord | None:
        for run in reversed(self.runs):
            if run.phase == phase and (not finished or run.finished_at):
                return run
        return None

    def run(self, run_id: str) -> RunRecord | None:
        return next((r for r in self.runs if r.run_id == run_id), None)

    def overrides(self) -> list[Event]:
        return [e for e in self.history if e.event == "gate_override"]

    def waivers(self, checklist: str) -> dict[str, Event]:
        """The items of `checklist` waived now (the latest waive of each, unless unwaived since)."""
        active: dict[str, Event] = {}
        for e in self.history:
            if e.event in ("checklist_waive", "checklist_unwaive") and getattr(e, "checklist", None) == checklist:
                item = getattr(e, "item", "")
                if e.event == "checklist_waive":
                    active[item] = e
                else:
                    active.pop(item, None)
        return active

    def last_ticks(self, checklist: str) -> dict[str, Event]:
        """The latest tick or untick recorded by a wf command for each item of `checklist`."""
        last: dict[str, Event] = {}
        for e in self.history:
            if e.event in ("checklist_tick", "checklist_untick") and getattr(e, "checklist", None) == checklist:
                last[getattr(e, "item", "")] = e
        return last

    def decision_in(self, phase: str) -> Decision | Event | None:
        """The latest decision made in `phase`: the current decision, or the one that led on from an
        earlier pass through it (kept in the history)."""
        if self.decision is not None and self.decision.phase == phase:
            return self.decision
        return next((e for e in reversed(self.history) if e.event == "decision" and getattr(e, "phase", None) == phase),
                    None)

    def path(self) -> list[str]:
        """The phases the project passed through to the current one, setup first: the current phase,
        the phase it was entered from, and so on back (a phase met twice ends the walk: baseline and
        diagnostics may alternate). Every path starts at setup."""
        if self.current_phase is None:
            return []
        path = [self.current_phase]
        while True:
            before = self.entered_from.get(path[-1])
            if before is None or before in path:
                break
            path.append(before)
        if "setup" not in path:
            path.append("setup")
        return path[::-1]


def new_project_id() -> str:
    import uuid

    return uuid.uuid4().hex


def who() -> str:
    """The person running wf: git's user.name where it is set, else the login name."""
    import getpass
    import subprocess

    name = os.environ.get("GIT_AUTHOR_NAME")
    if not name:
        try:
            out = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True, timeout=5, check=False)
            name = out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            name = None
    if not name:
        try:
            name = getpass.getuser()
        except (OSError, KeyError):
            name = "unknown"
    return name


def load_state(project: Project) -> ProjectState:
    path = project.state_path
    try:
        raw = jsontext.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StateError(f"{path}: not found.", hint="Create the project with `wf init DIR`.") from None
    except json.JSONDecodeError as exc:
        raise StateError(f"{path}: line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg}).",
                         hint="Restore it from version control (`git checkout -- .wf/state.json`).") from None
    except (OSError, UnicodeDecodeError, jsontext.NestedTooDeep) as exc:
        raise StateError(f"{path}: cannot be read ({exc}).",
                         hint="Restore it from version control (`git checkout -- .wf/state.json`).") from None
    if isinstance(raw, dict) and raw.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise StateError(f"{path}: schema_version {raw.get('schema_version')!r} is not supported by wf "
                         f"{__version__} (it reads version {SCHEMA_VERSION}).",
                         hint="Use the wf version that wrote it, or restore the file from version control.")
    try:
        return ProjectState.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  - {'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}"
                             for e in exc.errors()[:10])
        raise StateError(f"{path}: not a valid wf state file:\n{problems}",
                         hint="Restore it from version control (`git checkout -- .wf/state.json`).") from None


GONE = ("its process is gone (killed, out of memory or disk, or the machine stopped) with no wf command "
        "holding the project")


def gone_runs(project: Project, state: ProjectState, lock_held: bool) -> list[RunRecord]:
    """Runs still `running` whose process is gone: no wf command holds the project (the command
    that runs a phase holds it until the run ends; sweep workers record no run), and the recorded
    process, on this machine, is not alive. Each is turned into what it is, `interrupted`, with
    its last resume point (checkpoints/resume.json) and the time of its last write; the caller
    decides whether to save (a locked command) or only show it (`wf status`, `wf runs`)."""
    if lock_held:
        return []
    gone = []
    for run in state.runs:
        if run.status != "running" or _alive(run):
            continue
        run_dir = project.inside(run.dir)
        point = _resume_point(run_dir / "checkpoints" / "resume.json")
        run.status, run.passed = "interrupted", False
        run.finished_at = run.finished_at or _last_write(run_dir) or now_iso()
        run.summary = {**run.summary, "stopped": GONE, **({"resume": point} if point else {})}
        gone.append(run)
    return gone


def _alive(run: RunRecord) -> bool:
    pid, host = getattr(run, "pid", None), getattr(run, "host", None)
    if not isinstance(pid, int) or host != socket.gethostname():
        return False  # the lock is free: the command that ran it is gone, wherever it ran
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _resume_point(path: Any) -> dict[str, Any] | None:
    try:
        point = jsontext.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return point if isinstance(point, dict) and isinstance(point.get("step"), int) else None


def _last_write(run_dir: Any) -> str | None:
    """When the run last wrote a file (its logs, its checkpoints): about when its process died."""
    times = [f.stat().st_mtime for folder in (run_dir / "logs", run_dir / "checkpoints") if folder.is_dir()
             for f in folder.iterdir() if f.is_file()]
    return datetime.fromtimestamp(max(times), timezone.utc).isoformat(timespec="seconds") if times else None


def settle_gone_runs(project: Project) -> list[RunRecord]:
    """Under the project lock (no other command runs): the runs whose process is gone, recorded as
    interrupted in state.json (what the next command finds), their leftover temp files swept."""
    from mlflow_core.atomic import remove_stale_temp_files

    state = load_state(project)
    gone = gone_runs(project, state, lock_held=False)
    for run in gone:
        state.record("phase_finished", phase=run.phase, run_id=run.run_id, status=run.status, reason=GONE)
        remove_stale_temp_files(project.inside(run.dir), recursive=True)
    if gone:
        save_state(project, state)
    return gone


def save_state(project: Project, state: ProjectState) -> None:
    atomic_write_json(project.state_path, state.model_dump(mode="json", exclude_none=False))
