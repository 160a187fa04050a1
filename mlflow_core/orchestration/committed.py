"""A failed command overwrites nothing: the files a project commits, as they were before a command,
put back when it fails.

A phase writes its outcome (reports, figures, evidence, checklist marks, the optimized config,
exports, the state) only when it ends, but runners write some of it as they go, and a failure can
come at any point: bad input found in the data, a crash, a report template refused. So the command
keeps the committed files as they were when it started (hard links: free, since every write wf makes
replaces a file instead of rewriting it) and, on failure, puts each one back and removes the ones it
added. A run stopped resumably (a signal, a full disk) keeps its run record in the state, so that
`--resume` finds it; nothing else it wrote stays either.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow_core.errors import RankLostError, RunInterruptedError, StorageError
from mlflow_core.workflow.project import Project

# what `wf init` tells people to commit (scaffold.GITIGNORE), with the exports the manifest vouches for
COMMITTED_DIRS = ("reports", "checklists", "configs", "diagnostics", "export", ".wf/evidence")
STATE = ".wf/state.json"


class CommittedFiles:
    """The committed files of a project as they were when `keep` was called."""

    def __init__(self, project: Project, keep_dir: Path, kept: dict[str, Path | None]):
        self.project = project
        self._dir = keep_dir
        self._kept = kept  # relative path → its kept copy (None: a folder that did not exist)

    @classmethod
    def keep(cls, project: Project) -> CommittedFiles:
        cache = project.wf_dir / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        keep_dir = Path(tempfile.mkdtemp(prefix="kept-", dir=cache))
        kept: dict[str, Path | None] = {}
        for path in _files(project):
            relative = path.relative_to(project.root).as_posix()
            copy = keep_dir / str(len(kept))
            try:
                os.link(path, copy)
            except OSError:  # a file system without hard links
                shutil.copy2(path, copy)
            kept[relative] = copy
        return cls(project, keep_dir, kept)

    def restore(self, *, state: bool = True) -> list[str]:
        """Put every kept file back and remove the files added since; `state=False` leaves the state
        file as it is now (a resumable stop's run record). Returns what changed back."""
        changed = []
        now = {p.relative_to(self.project.root).as_posix(): p for p in _files(self.project)}
        for relative, path in now.items():
            if relative == STATE and not state:
                continue
            copy = self._kept.get(relative)
            if copy is None:
                path.unlink()
                changed.append(relative)
            elif not os.path.samefile(path, copy) and path.read_bytes() != copy.read_bytes():
                _put_back(copy, path)
                changed.append(relative)
        for relative, copy in self._kept.items():
            if relative not in now and (state or relative != STATE):
                target = self.project.root / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                _put_back(copy, target)
                changed.append(relative)
        return changed

    def discard(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def _files(project: Project) -> list[Path]:
    files = [p for d in COMMITTED_DIRS for p in sorted((project.root / d).rglob("*")) if p.is_file()
             and not p.name.endswith(".tmp")]
    state = project.root / STATE
    return [*files, state] if state.is_file() else files


def _put_back(copy: Path, target: Path) -> None:
    """The kept version back in place, atomically (a link under a temporary name, then a rename)."""
    temporary = target.with_name(f".{target.name}.restore.tmp")
    try:
        os.link(copy, temporary)
    except OSError:
        shutil.copy2(copy, temporary)
    os.replace(temporary, target)


@contextmanager
def unchanged_on_failure(project: Project) -> Iterator[None]:
    """The committed files as they were when the block started, put back if it raises."""
    kept = CommittedFiles.keep(project)
    try:
        yield
    except BaseException as exc:
        _restore_after(kept, exc)
        raise
    finally:
        kept.discard()


def _restore_after(kept: CommittedFiles, exc: BaseException) -> None:
    """A command that failed leaves the committed files as they were; one stopped resumably keeps the
    run record that `--resume` continues."""
    resumable = isinstance(exc, (RunInterruptedError, StorageError, RankLostError, KeyboardInterrupt))
    try:
        changed = kept.restore(state=not resumable)
    except OSError as error:  # the disk refuses even this: say so, and let the first error be seen
        logging.getLogger("wf").error("the committed files could not all be put back: %s", error)
        return
    if changed:
        logging.getLogger("wf").info("put back as they were: %s", ", ".join(changed))
