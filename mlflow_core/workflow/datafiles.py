"""Data manifests: what a gate verified about the data, file by file, and a quick check that it holds.

`wf phase setup` hashes every file of every split (train/, val/, test/ under `data.path`) and writes a
content-addressed manifest, `.wf/manifests/<sha256>.json`, one line per file (relative path, size,
sha256), with each split's file count, bytes and content hash, and what the files hold: NPZ array
keys, shapes and dtypes, or ImageFolder class names. Evidence records the manifest's digest.

Later phases and `wf gate check` verify the data against it quickly: a directory walk and a stat per
file, with a file re-hashed only when its size or mtime differs from the machine-local stat cache
(`.wf/cache/stat.json`, git-ignored: a clone has other mtimes). A touched but unchanged file is
re-hashed once and found equal. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_core.atomic import atomic_write_text
from mlflow_core.config import CONFIG_FILENAME
from mlflow_core.errors import StorageError, UserInputError
from mlflow_core.workflow import jsontext

MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")
FILE_SOURCES = ("npz", "imagefolder", "csv")
_SKIPPED = (".DS_Store", "Thumbs.db", "desktop.ini")  # written by file browsers, never data
_HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _JsonCache:
    """A machine-local JSON file read on first use and written back (atomically, best effort) when
    it changed: a read-only checkout (CI) simply does the work again next time."""

    version = 2

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {}
        self.dirty = False
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            raw = jsontext.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(raw, dict) and raw.get("version") == self.version and isinstance(raw.get("data"), dict):
                self.data = raw["data"]
        except (OSError, ValueError):
            pass  # no cache, or a damaged one: the work is done again

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps({"version": self.version, "data": self.data},
                                                    separators=(",", ":")))
            self.dirty = False
        except (OSError, StorageError):  # a cache that cannot be written only costs time
            pass


class StatCache(_JsonCache):
    """sha256 of files by (size, mtime_ns), kept on this machine only. A file whose size and mtime
    are unchanged is not read again; anything else is hashed and remembered."""

    def sha256(self, path: str | Path, st: os.stat_result | None = None) -> str:
        self._load()
        key = os.fspath(path)
        st = st or os.stat(key)
        hit = self.data.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = sha256_file(Path(key))
        self.data[key] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest


class ListingCache(_JsonCache):
    """Manifest → the digest of the (path, size, mtime) listing its data had when it last matched:
    the same listing again means the same files, and nothing but the directory needs reading. Kept
    apart from StatCache so that this check never loads a per-file table."""

    def verified(self, manifest: str, listing: str) -> bool:
        self._load()
        return self.data.get(manifest) == listing

    def remember(self, manifest: str, listing: str) -> None:
        self._load()
        if self.data.get(manifest) != listing:
            self.data[manifest] = listing
            self.dirty = True


@dataclass
class SplitFiles:
    files: dict[str, tuple[int, str]]  # relative path → (size, sha256)
    holds: dict[str, Any] = field(default_factory=dict)  # NPZ arrays or ImageFolder classes

    def summary(self) -> dict[str, Any]:
        return {"files": len(self.files), "bytes": sum(s for s, _ in self.files.values()),
                "sha256": split_sha256(self.files), **self.holds}


def split_sha256(files: dict[str, tuple[int, str]]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(f"{rel}\0{files[rel][1]}\n".encode())
    return digest.hexdigest()


def _files(folder: Path | str) -> list[os.DirEntry]:
    """Every regular file under `folder`, without following links out of it; hidden files and
    file-browser litter are not data. Plain scandir entries: this runs once per file of a data set
    that may hold a million, and a gate check is little else."""
    found: list[os.DirEntry] = []
    stack = [os.fspath(folder)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or entry.name in _SKIPPED:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file():
                        found.append(entry)
        except OSError as exc:
            raise UserInputError(f"{current}: cannot be read ({exc.strerror}) (data.path)") from None
    return found


def _relative(entry: os.DirEntry, prefix: int) -> str:
    rel = entry.path[prefix:]
    return rel if os.sep == "/" else rel.replace(os.sep, "/")


def stat_listing(root: Path, also: Path | None = None) -> str:
    """A digest of every data file's path, size and mtime under the split folders of `root` (and of
    the file `also`, the manifest itself): equal digests mean nothing was added, removed, written or
    touched. One directory walk and a stat per file, nothing read."""
    rows: list[str] = []
    for name in SPLITS:
        base = os.path.join(root, name)
        if os.path.isdir(base):
            prefix = len(base) + 1
            for entry in _files(base):
                st = entry.stat()
                rows.append(f"{name}/{_relative(entry, prefix)}\0{st.st_size}\0{st.st_mtime_ns}")
    if also is not None:
        st = also.stat()
        rows.append(f"\0manifest\0{st.st_size}\0{st.st_mtime_ns}")
    rows.sort()
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def scan_split(folder: Path, cache: StatCache) -> dict[str, tuple[int, str]]:
    prefix = len(os.fspath(folder)) + 1
    out = {}
    for entry in _files(folder):
        st = entry.stat()
        out[_relative(entry, prefix)] = (st.st_size, cache.sha256(entry.path, st))
    return out


def data_root(cfg: Any, project_root: Path) -> Path | None:
    """The folder holding the splits, for file-based sources (None for digits and custom data)."""
    if cfg.data.source not in FILE_SOURCES or not cfg.data.path:
        return None
    root = (project_root / cfg.data.path).resolve()
    return root


def npz_arrays(path: Path) -> dict[str, dict[str, Any]]:
    """The arrays of an .npz (key → shape and dtype) read from its headers, nothing decompressed
    beyond them and nothing unpickled."""
    import numpy as np

    out: dict[str, dict[str, Any]] = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not name.endswith(".npy"):
                continue
            with archive.open(name) as f:
                major, _minor = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if major == 1
                               else np.lib.format.read_array_header_2_0)
                shape, _fortran, dtype = read_header(f)
            out[name[:-4]] = {"shape": list(shape), "dtype": str(dtype)}
    return out


def describe_split(folder: Path, files: dict[str, tuple[int, str]], source: str) -> dict[str, Any]:
    """What a split holds: for NPZ each array's shape and dtype (and how many files differ from the
    first), for ImageFolder the class folder names."""
    if source == "imagefolder":
        classes = sorted({rel.split("/", 1)[0] for rel in files if "/" in rel})
        return {"classes": classes}
    first, differing, unreadable = None, 0, []
    for rel in sorted(files):
        if not rel.endswith(".npz"):
            continue
        try:
            arrays = npz_arrays(folder / rel)
        except (OSError, ValueError, zipfile.BadZipFile):
            unreadable.append(rel)
            continue
        if first is None:
            first = arrays
        elif arrays != first:
            differing += 1
    out: dict[str, Any] = {"arrays": first or {}}
    if differing:
        out["arrays_differ_in"] = differing
    if unreadable:
        out["unreadable"] = unreadable[:10]
    return out


@dataclass
class DataManifest:
    source: str
    root: str  # data.path as configured
    splits: dict[str, SplitFiles]

    def split_summaries(self) -> dict[str, dict[str, Any]]:
        return {name: split.summary() for name, split in self.splits.items()}

    def body(self) -> dict[str, Any]:
        return {"version": MANIFEST_VERSION, "source": self.source, "root": self.root,
                "splits": self.split_summaries()}

    def to_text(self) -> str:
        """JSON with one line per file, so that a change to the data reads as a small diff in git."""
        head = json.dumps(self.body(), sort_keys=True)
        lines = [head[:-1] + ', "files": {']
        split_lines = []
        for name, split in sorted(self.splits.items()):
            rows = [f"  {json.dumps(rel)}: [{size}, {json.dumps(sha)}]"
                    for rel, (size, sha) in sorted(split.files.items())]
            split_lines.append(f' {json.dumps(name)}: {{\n' + ",\n".join(rows) + "\n }")
        return "\n".join(lines) + "\n" + ",\n".join(split_lines) + "\n}}\n"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_text().encode()).hexdigest()


def build_manifest(cfg: Any, project_root: Path, cache: StatCache, *, describe: bool = True) -> DataManifest | None:
    """The manifest of the data as it is now (None for sources that are not files)."""
    root = data_root(cfg, project_root)
    if root is None:
        return None
    if not root.is_dir():
        raise UserInputError(f"{CONFIG_FILENAME}: data.path = {cfg.data.path!r}: the folder {root} does not exist",
                             hint=f"Point data.path in {CONFIG_FILENAME} at the data folder (relative to the "
                                  "project's root), or put the data there.")
    if cfg.data.source == "csv":
        return _csv_manifest(cfg, root, cache, describe)
    missing = [name for name in ("train", "val") if not (root / name).is_dir()]
    if missing:  # refused before a file of it is read: data.path may name any folder of the machine
        raise UserInputError(f"{CONFIG_FILENAME}: data.path = {cfg.data.path!r}: {root} has no "
                             f"{' or '.join(f'{m}/' for m in missing)} folder; {cfg.data.source} data is a folder "
                             "holding train/ and val/ (and test/)",
                             hint=f"Point data.path in {CONFIG_FILENAME} at the data folder.")
    splits = {}
    for name in SPLITS:
        folder = root / name
        if not folder.is_dir():
            continue
        files = scan_split(folder, cache)
        holds = describe_split(folder, files, cfg.data.source) if describe else {}
        splits[name] = SplitFiles(files, holds)
    return DataManifest(cfg.data.source, str(cfg.data.path), splits)


def _csv_manifest(cfg: Any, root: Path, cache: StatCache, describe: bool) -> DataManifest:
    """A CSV manifest's splits: each split's table and every file it names (paths relative to the
    data folder), hashed like a folder's files."""
    from mlflow_core.workflow.tables import csv_splits, read_rows

    segmentation = getattr(cfg, "task", "classification") == "segmentation"
    splits = {}
    for name in csv_splits(root):
        rows = read_rows(root, name, cfg.data, segmentation)
        names = [f"{name}.csv", *(r.path for r in rows), *(r.mask for r in rows if r.mask)]
        files = {}
        for rel in dict.fromkeys(names):
            path = root / rel
            st = path.stat()
            files[Path(rel).as_posix()] = (st.st_size, cache.sha256(str(path), st))
        holds = {"classes": sorted({r.label for r in rows if r.label is not None}), "rows": len(rows)} if describe else {}
        splits[name] = SplitFiles(files, holds)
    return DataManifest(cfg.data.source, str(cfg.data.path), splits)


def manifests_dir(project_root: Path) -> Path:
    return project_root / ".wf" / "manifests"


def stat_cache(project_root: Path, name: str = "data") -> StatCache:
    """This machine's sha256-by-stat table: `data` for the data files, `files` for wf's own outputs."""
    return StatCache(project_root / ".wf" / "cache" / f"{name}-stat.json")


def listing_cache(project_root: Path) -> ListingCache:
    return ListingCache(project_root / ".wf" / "cache" / "verified-listings.json")


CREATED: list[tuple[Path, str]] = []  # the manifests this process stored: (project root, relative path)


def write_manifest(project_root: Path, manifest: DataManifest) -> str:
    """Store the manifest under its digest; returns the path relative to the project."""
    text = manifest.to_text()
    digest = hashlib.sha256(text.encode()).hexdigest()
    path = manifests_dir(project_root) / f"{digest}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        CREATED.append((project_root, path.relative_to(project_root).as_posix()))
    return path.relative_to(project_root).as_posix()


def discard_created_manifests() -> list[str]:
    """The manifests this process stored that no evidence names, removed: what a refused command
    (exit 2 or 3) wrote on its way to the refusal leaves nothing behind. Those a recorded phase
    names stay. Returns the removed paths."""
    removed = []
    for project_root, relative in CREATED:
        evidence = project_root / ".wf" / "evidence"
        named = any(relative in f.read_text(encoding="utf-8", errors="replace")
                    for f in evidence.rglob("*.json")) if evidence.is_dir() else False
        if not named:
            (project_root / relative).unlink(missing_ok=True)
            removed.append(relative)
    CREATED.clear()
    return removed


def read_manifest(project_root: Path, relative: str) -> DataManifest:
    """A stored manifest; one that is missing, unreadable or not what its name says is exit 2."""
    path = project_root / relative
    try:
        text = path.read_text(encoding="utf-8")
        raw = jsontext.loads(text)
        if hashlib.sha256(text.encode()).hexdigest() != path.stem:
            raise ValueError("its content does not match its name (it was edited)")
        splits = {name: SplitFiles({rel: (int(v[0]), str(v[1])) for rel, v in files.items()},
                                   {k: v for k, v in raw["splits"][name].items()
                                    if k not in ("files", "bytes", "sha256")})
                  for name, files in raw["files"].items()}
        return DataManifest(raw["source"], raw["root"], splits)
    except FileNotFoundError:
        raise UserInputError(f"{relative}: the data manifest that a gate recorded is missing.",
                             hint="Restore it from version control, or run `wf phase setup` again.") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise UserInputError(f"{relative}: cannot be read as a wf data manifest ({exc}).",
                             hint="Restore it from version control, or run `wf phase setup` again.") from None


def manifest_changes(recorded: DataManifest, current: DataManifest) -> dict[str, dict[str, list[str]]]:
    """Per split: files added, removed and changed (by content) since `recorded`."""
    out: dict[str, dict[str, list[str]]] = {}
    for name in sorted(set(recorded.splits) | set(current.splits)):
        before = recorded.splits.get(name, SplitFiles({})).files
        after = current.splits.get(name, SplitFiles({})).files
        if before == after:
            continue
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        changed = sorted(rel for rel in set(before) & set(after) if before[rel][1] != after[rel][1])
        if added or removed or changed:
            out[name] = {"added": added, "removed": removed, "changed": changed}
    return out


def describe_changes(changes: dict[str, dict[str, list[str]]], limit: int = 3) -> str:
    """'train: 1 added (patch_0009.npz), 2 changed (…); test: 1 removed (…)'."""
    parts = []
    for split, kinds in changes.items():
        bits = []
        for kind in ("added", "removed", "changed"):
            names = kinds[kind]
            if names:
                shown = ", ".join(names[:limit]) + (f", … {len(names) - limit} more" if len(names) > limit else "")
                bits.append(f"{len(names)} {kind} ({shown})")
        parts.append(f"{split}: " + ", ".join(bits))
    return "; ".join(parts)

