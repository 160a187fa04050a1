"""Atomic writes: temp file in the same directory, fsync, os.replace, fsync of the directory.

A reader (or a process killed half-way through a write) sees either the old file or the new one,
never a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from mlflow_core.errors import StorageError


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# what the file system says when it will not take a write; anything else is a bug to see in full
STORAGE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied", errno.EFBIG: "the file is larger than allowed"}
TEMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; a replaced file keeps its mode, a new one gets what open() would give it,
# so that a lab's shared project stays readable by the group
_NEW_FILE_MODE = 0o666 & ~_current_umask()


def storage_error(path: str | os.PathLike, exc: OSError) -> Exception:
    """A StorageError naming the file and the reason, for the OSErrors of STORAGE_ERRNOS."""

    if exc.errno not in STORAGE_ERRNOS:
        return exc
    return StorageError(f"{path}: cannot be written: {STORAGE_ERRNOS[exc.errno]} ({exc.strerror}); "
                        "the previous version of the file is kept.",
                        hint="Free space (or fix the permissions) and run the command again; an interrupted "
                             "training run continues with `wf phase NAME --resume`.")


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[list[str | Path]]:
    """The block makes a temp file next to `path` and names it in the list it is given; when the
    block ends well it is moved onto `path` and the directory synced. On failure the temp file is
    removed, and a refusal of the file system (full, read-only, no permission) is a StorageError
    naming `path`, whose old version is intact."""
    temp: list[str | Path] = []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temp
        os.replace(temp[0], path)
    except BaseException as exc:
        if temp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp[0])
        refused = _refused_write(exc)
        if refused is not None:
            raise storage_error(path, refused) from None
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(fileobj)` on a temp file next to `path`, then move it into place. A write the
    file system refuses (full, read-only, no permission) raises StorageError, the old file intact."""
    path = Path(path)
    with _replacing(path) as temp:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        temp.append(name)
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = _NEW_FILE_MODE
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def _refused_write(exc: BaseException) -> OSError | None:
    """The file system's refusal behind `exc`, if any: torch.save reports a failed write as a
    RuntimeError whose context is the OSError."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def remove_stale_temp_files(directory: Path, recursive: bool = False) -> list[Path]:
    """Remove the temp files that a killed writer left behind: a dot, the target's name, mkstemp's
    random part and TEMP_SUFFIX. Call it while holding the project lock, when no writer of ours is
    alive to own them."""
    if not directory.is_dir():
        return []
    pattern = f".*{TEMP_SUFFIX}"
    found = sorted(directory.rglob(pattern) if recursive else directory.glob(pattern))
    for stale in found:
        with contextlib.suppress(OSError):
            stale.unlink()
    return found


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_link(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make `path` the same file as `source`, atomically: a hard link (no second write of the
    bytes), or a copy where the file system has no hard links. The name is moved into place as
    atomic_write moves a temp file, so `path` is the old file or the new one, never a torn one.
    (Every writer here replaces a file rather than writing into it, so files that share their
    bytes this way never change under each other.)"""
    import shutil

    source, path = Path(source), Path(path)
    with _replacing(path) as temp:
        name = path.parent / f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}{TEMP_SUFFIX}"
        temp.append(name)
        try:
            os.link(source, name)
        except OSError as exc:
            if exc.errno in STORAGE_ERRNOS and exc.errno not in (errno.EPERM, errno.EACCES):
                raise  # a full or read-only disk: no copy would fit either
            shutil.copy(source, name)  # no hard links here (EPERM, EXDEV, ENOTSUP …): the bytes and the mode
            with open(name, "rb") as copied:
                os.fsync(copied.fileno())
