"""Several processes on one study: trials claimed one at a time, so that the study ends with exactly
`optimization.n_trials` trials however many workers run it, on one machine or many.

A worker takes the study's claim lock, counts the trials that hold a slot (finished ones, and those
running in any process), and asks Optuna for a new trial only while one is free; the lock is held
from the count to the ask, never while a trial trains. The lock is the database's own where the
study lives in PostgreSQL (an advisory lock, so workers on many machines agree), else a file lock
next to the storage (SQLite on one machine, or Optuna's journal file on a shared file system).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow_core.errors import UserInputError


def owner_tag(project_root: Path) -> str:
    """Which process on which machine runs a trial (a shared study holds other machines' trials)."""
    return f"{socket.gethostname()}:{project_root.resolve()}:{os.getpid()}"


def owner_is_gone(owner: str | None, project_root: Path) -> bool:
    """A trial marked running whose process is known to be dead: one of this project's, on this
    machine, whose pid is gone (a trial recorded without a pid was ours and we hold the lock)."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    root, sep, pid = rest.rpartition(":")
    if not sep or not pid.isdigit():  # recorded before trials carried their pid
        root, pid = rest, ""
    if host != socket.gethostname() or root != str(project_root.resolve()):
        return False
    if not pid:
        return True
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextlib.contextmanager
def claim_lock(storage_url: str, study_name: str, lock_file: Path) -> Iterator[None]:
    if storage_url.startswith(("postgresql://", "postgresql+")):
        from sqlalchemy import create_engine, text

        key = int.from_bytes(hashlib.sha256(f"wf:{study_name}".encode()).digest()[:8], "big", signed=True)
        engine = create_engine(storage_url, pool_pre_ping=True)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def holds_a_slot(trial: Any) -> bool:
    """Finished on its own (complete, pruned, failed with a result of its own), or running now.
    An interrupted trial was ended as failed and enqueued again: the enqueued one holds its slot."""
    state = trial.state.name
    if state == "RUNNING":
        return True
    if state in ("COMPLETE", "PRUNED"):
        return True
    return state == "FAIL" and trial.user_attrs.get("status") not in (None, "interrupted")


def open_storage(optuna: Any, url: str, project_root: Path) -> Any:
    """Optuna's storage for `url`: an RDB URL as it is, `journal:PATH` as Optuna's journal file (a
    shared file system without a database server; PATH relative to the project)."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
        path = path if path.is_absolute() else project_root / path
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith(("postgresql://", "postgresql+psycopg://")):
        try:
            import psycopg  # noqa: F401  (SQLAlchemy 2.1 reads postgresql:// with psycopg 3)
        except ImportError:
            raise UserInputError(f"optimization.storage {url.split('@')[-1]!r}: PostgreSQL needs the psycopg driver, "
                                 "which is not installed (Optuna would say only \"Failed to import DB access "
                                 "module\").", hint="Install it with `pip install 'wf-phases[postgres]'`.") from None
    return url


def lock_file_for(url: str, project_root: Path) -> Path:
    """The file lock's path: next to a journal or SQLite file, else (a database server that is not
    PostgreSQL) in the project's .wf/."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
        path = path if path.is_absolute() else project_root / path
        return path.with_name(path.name + ".claim.lock")
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path = path if path.is_absolute() else project_root / path
        return path.with_name(path.name + ".claim.lock")
    return project_root / ".wf" / "optuna.claim.lock"
