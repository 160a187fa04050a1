"""One writer per project: the lock every command that changes the project takes, in one idiom.

    @locked("wf decide {choice}")
    def decide(project, choice, reason): ...

`locked` takes the lock for the whole call (DVC's `@locked`, on `repo/add.py` and its siblings),
naming the command in the lock file (what a second command is told); `held` asks, without taking
it, whether a command holds it now (`wf status`). Taking the lock also clears what a killed writer
left: temp files of atomic writes, the kept copies of committed files.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from mlflow_core.atomic import remove_stale_temp_files, storage_error
from mlflow_core.errors import ProjectBusyError
from mlflow_core.workflow.project import Project

F = TypeVar("F", bound=Callable[..., Any])


def locked(command: str) -> Callable[[F], F]:
    """Run the decorated function, whose first argument is the project, under its lock. `command`
    is what the lock file says holds it, formatted with the call's arguments ("wf phase {phase}")."""

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def under_lock(project: Project, *args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(project, *args, **kwargs)
            bound.apply_defaults()
            with _project_lock(project, command.format(**bound.arguments)):
                return function(project, *args, **kwargs)
        return under_lock  # type: ignore[return-value]
    return decorate


@contextmanager
def _project_lock(project: Project, command: str | None = None) -> Iterator[None]:
    """One writer per project. The OS drops a flock when its process dies, so a lock left by a
    killed process is never stale; the file's content only says who holds it."""
    try:
        project.wf_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(project.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # a read-only checkout, a directory we may not write
        raise storage_error(project.lock_path, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another wf command"
            raise ProjectBusyError(f"{project.root} is in use by {holder}.",
                                   hint="Wait for it to finish; `wf status` and `wf gate check` still work.") from None
        os.ftruncate(fd, 0)
        label = command or " ".join(["wf", *sys.argv[1:]])
        os.pwrite(fd, f"`{label}` (pid {os.getpid()})".encode(), 0)
        # we are the only writer now: a temp file of an atomic write is a killed writer's leftover
        for directory in (project.wf_dir, project.reports_dir):  # reports/figures/ too
            remove_stale_temp_files(directory, recursive=True)
        for directory in (project.root, project.checklists_dir, project.root / "configs", project.root / "export",
                          project.root / "slurm"):
            remove_stale_temp_files(directory)
        for kept in (project.wf_dir / "cache").glob("kept-*"):  # a killed command's copies (committed.py)
            shutil.rmtree(kept, ignore_errors=True)
        _settle(project)  # a run still "running" now lost its process: it is interrupted
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def held(project: Project) -> bool:
    """Does a wf command hold the project lock now? Asked without taking it, for read-only commands."""
    try:
        fd = os.open(project.lock_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _settle(project: Project) -> None:
    from mlflow_core.errors import StateError
    from mlflow_core.workflow.state import settle_gone_runs

    if not project.state_path.is_file():
        return
    with contextlib.suppress(StateError):  # a damaged state.json: the command itself reads it and says so
        settle_gone_runs(project)
