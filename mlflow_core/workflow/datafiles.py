"""Data manifests: what a gate verified about the data, file by file, and a quick check that it holds.

`wf phase setup` hashes every file of every split (train/, val/, test/ under `data.path`) and writes a
content-addressed manifest, `.wf/manifests/<sha256>.json`: a tree of digests, one line per folder (its
files and bytes, the digest of everything below it and the digest of its own files, built as git
builds its trees), with each split's file count, bytes and digest and what the files hold: NPZ array
keys, shapes and dtypes, or ImageFolder class names. Evidence records the manifest's digest. What a
project commits stays small whatever the data: ImageNet's 1.28 M files in 1,000 class folders are
about 3,000 lines. The per-file listing (path, size, sha256) goes to this machine's cache
(`.wf/cache/listings/<sha256>.json`), from which a change is named down to the file; without it (a
fresh clone) a change is named down to the folder, and the listing is built again from the files.
Manifests of an earlier wf (version 1, one line per file) are read as they are.

Later phases and `wf gate check` verify the data against it quickly: a directory walk and a stat per
file, with a file re-hashed only when its size or mtime differs from the machine-local stat cache
(`.wf/cache/data-stat.sqlite`, git-ignored: a clone has other mtimes). A touched but unchanged file is
re-hashed once and found equal. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_core.atomic import atomic_write_text
from mlflow_core.config import CONFIG_FILENAME
from mlflow_core.errors import StorageError, UserInputError
from mlflow_core.workflow import jsontext

MANIFEST_VERSION = 2  # 1: one line per file (read, never written)
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


class StatCache:
    """sha256 of files by (size, mtime_ns), kept on this machine only, in SQLite (the standard
    library's): a lookup reads one row and `save` writes the rows that changed, whatever the number
    of files; the JSON file it replaces was read and written whole (201 MB and 3.9 s to load at
    ImageNet's size). A file whose size and mtime are unchanged is not read again; anything else is
    hashed and remembered. Processes that share the cache (a sweep's workers, data-parallel ranks)
    wait for each other's writes; a cache that cannot be opened or written only costs the hashing."""

    def __init__(self, path: Path):
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._opened = False
        self._pending: dict[str, tuple[int, int, str]] = {}

    def _connection(self) -> sqlite3.Connection | None:
        if not self._opened:
            self._opened = True
            try:
                self._db = self._open()
            except sqlite3.OperationalError:  # locked past the timeout, read-only: no cache this time
                pass
            except sqlite3.DatabaseError:  # not a database (damaged, or another file): started anew once
                try:
                    self.path.unlink(missing_ok=True)
                    self._db = self._open()
                except (sqlite3.Error, OSError):
                    pass
            except OSError:
                pass
        return self._db

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60)
        db.execute("CREATE TABLE IF NOT EXISTS stat (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                   "sha256 TEXT) WITHOUT ROWID")
        db.commit()
        self.path.with_suffix(".json").unlink(missing_ok=True)  # the earlier whole-file cache
        return db

    def sha256(self, path: str | Path, st: os.stat_result | None = None) -> str:
        key = os.fspath(path)
        st = st or os.stat(key)
        hit = self._pending.get(key)
        if hit is None and (db := self._connection()) is not None:
            try:
                hit = db.execute("SELECT size, mtime_ns, sha256 FROM stat WHERE path = ?", (key,)).fetchone()
            except sqlite3.Error:
                hit = None
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = sha256_file(Path(key))
        self._pending[key] = (st.st_size, st.st_mtime_ns, digest)
        if len(self._pending) >= 10_000:  # bounded memory at any data size
            self.save()
        return digest

    def save(self) -> None:
        if not self._pending or (db := self._connection()) is None:
            self._pending.clear()
            return
        rows = [(key, *entry) for key, entry in self._pending.items()]
        self._pending.clear()
        try:
            with db:
                db.executemany("INSERT OR REPLACE INTO stat VALUES (?, ?, ?, ?)", rows)
        except sqlite3.Error:  # read-only, locked past the timeout, full: the work is done again next time
            pass


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


Folder = tuple[int, int, str, str]  # files and bytes (all below it), digest of its tree, of its own files


@dataclass
class SplitFiles:
    files: dict[str, tuple[int, str]]  # relative path → (size, sha256); empty when only the tree is known
    holds: dict[str, Any] = field(default_factory=dict)  # NPZ arrays or ImageFolder classes
    tree: dict[str, Folder] | None = None  # the committed tree when the files are not listed here
    flat_sha256: str | None = None  # a version-1 manifest's split digest (over its file list)

    @property
    def listed(self) -> bool:
        return self.tree is None

    def folders(self) -> dict[str, Folder]:
        return self.tree if self.tree is not None else folder_tree(self.files)

    def summary(self) -> dict[str, Any]:
        files, size, digest, _ = self.folders()[""]  # the split itself: every tree has it
        return {"files": files, "bytes": size, "sha256": self.flat_sha256 or digest, **self.holds}


def folder_tree(files: dict[str, tuple[int, str]]) -> dict[str, Folder]:
    """Every folder of a split ("" the split itself, "a/b" below it): its files and bytes, all levels
    below included; the digest of its tree (its files' names, sizes and sha256, its subfolders' names
    and tree digests, as a git tree); and the digest of its own files alone, which names the folders
    whose files changed. A change anywhere changes the tree digest of every folder above it."""
    own: dict[str, dict[str, tuple[int, str]]] = defaultdict(dict)
    subfolders: dict[str, set[str]] = defaultdict(set)
    own[""] = {}
    for rel, entry in files.items():
        folder, _, name = rel.rpartition("/")
        own[folder][name] = entry
        while folder:  # every folder above it exists, and knows its subfolder
            parent, _, child = folder.rpartition("/")
            if child in subfolders[parent]:
                break
            subfolders[parent].add(child)
            own.setdefault(parent, {})
            folder = parent
    tree: dict[str, Folder] = {}
    for folder in sorted(own, key=lambda f: -(f.count("/") + 1 if f else 0)):  # deepest first
        entries = own[folder]
        own_digest = hashlib.sha256()
        for name in sorted(entries):
            own_digest.update(f"{name}\0{entries[name][0]}\0{entries[name][1]}\n".encode())
        digest = hashlib.sha256(f"files\0{own_digest.hexdigest()}\n".encode())
        count, size = len(entries), sum(e[0] for e in entries.values())
        for child in sorted(subfolders.get(folder, ())):
            below = tree[f"{folder}/{child}" if folder else child]
            digest.update(f"folder\0{child}\0{below[2]}\n".encode())
            count, size = count + below[0], size + below[1]
        tree[folder] = (count, size, digest.hexdigest(), own_digest.hexdigest())
    return dict(sorted(tree.items()))


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
        """What a project commits: JSON with one line per folder, so that a change to the data reads
        as a small diff in git whatever the number of files."""
        return self._text("folders", {name: {folder: list(entry) for folder, entry in split.folders().items()}
                                      for name, split in self.splits.items()})

    def listing_text(self) -> str:
        """The per-file listing, one line per file (this machine's cache)."""
        return self._text("files", {name: {rel: list(entry) for rel, entry in split.files.items()}
                                    for name, split in self.splits.items()})

    def _text(self, key: str, rows_by_split: dict[str, dict[str, list[Any]]]) -> str:
        head = json.dumps(self.body(), sort_keys=True)
        split_lines = []
        for name, rows in sorted(rows_by_split.items()):
            lines = [f"  {json.dumps(row)}: {json.dumps(value)}" for row, value in sorted(rows.items())]
            split_lines.append(f' {json.dumps(name)}: {{\n' + ",\n".join(lines) + "\n }")
        return head[:-1] + f', "{key}": {{' + "\n" + ",\n".join(split_lines) + "\n}}\n"

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
    return StatCache(project_root / ".wf" / "cache" / f"{name}-stat.sqlite")


def listing_cache(project_root: Path) -> ListingCache:
    return ListingCache(project_root / ".wf" / "cache" / "verified-listings.json")


CREATED: list[tuple[Path, str]] = []  # the manifests this process stored: (project root, relative path)


def listing_path(project_root: Path, digest: str) -> Path:
    return project_root / ".wf" / "cache" / "listings" / f"{digest}.json"


def write_manifest(project_root: Path, manifest: DataManifest) -> str:
    """Store the manifest under its digest, and its per-file listing in this machine's cache; returns
    the manifest's path relative to the project."""
    text = manifest.to_text()
    digest = hashlib.sha256(text.encode()).hexdigest()
    path = manifests_dir(project_root) / f"{digest}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        CREATED.append((project_root, path.relative_to(project_root).as_posix()))
    listing = listing_path(project_root, digest)
    if all(split.listed for split in manifest.splits.values()) and not listing.is_file():
        try:  # a cache: one that cannot be written only costs naming a change by its folder
            listing.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(listing, manifest.listing_text())
        except (OSError, StorageError):
            pass
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
        holds = {name: {k: v for k, v in summary.items() if k not in ("files", "bytes", "sha256")}
                 for name, summary in raw["splits"].items()}
        if "files" in raw:  # version 1: the files themselves
            splits = {name: SplitFiles(_entries(files), holds[name], flat_sha256=raw["splits"][name]["sha256"])
                      for name, files in raw["files"].items()}
        else:
            splits = {name: SplitFiles({}, holds[name], {f: (int(v[0]), int(v[1]), str(v[2]), str(v[3]))
                                                         for f, v in folders.items()})
                      for name, folders in raw["folders"].items()}
            if any("" not in split.tree for split in splits.values()):
                raise ValueError("a split without its own folder line")
            _attach_listing(project_root, path.stem, splits)
        return DataManifest(raw["source"], raw["root"], splits)
    except FileNotFoundError:
        raise UserInputError(f"{relative}: the data manifest that a gate recorded is missing.",
                             hint="Restore it from version control, or run `wf phase setup` again.") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise UserInputError(f"{relative}: cannot be read as a wf data manifest ({exc}).",
                             hint="Restore it from version control, or run `wf phase setup` again.") from None


def _entries(files: dict[str, Any]) -> dict[str, tuple[int, str]]:
    return {rel: (int(v[0]), str(v[1])) for rel, v in files.items()}


def _attach_listing(project_root: Path, digest: str, splits: dict[str, SplitFiles]) -> None:
    """The per-file listing from this machine's cache, where it is the committed tree's: its folders'
    digests are computed again and must be the committed ones (a stale or edited cache names nothing)."""
    try:
        raw = jsontext.loads(listing_path(project_root, digest).read_text(encoding="utf-8"))
        listed = {name: _entries(files) for name, files in raw["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return
    if set(listed) != set(splits) or any(folder_tree(listed[n]) != splits[n].tree for n in splits):
        return
    for name, split in splits.items():
        split.files, split.tree = listed[name], None


def files_in_two_splits(manifest: DataManifest) -> dict[str, list[tuple[str, str]]]:
    """Every pair of splits, every file compared by sha256: per pair ("train_val"), the files of the
    second split identical to one of the first, each with the first's file it repeats."""
    out = {}
    names = [n for n in SPLITS if n in manifest.splits]
    for i, a in enumerate(names):
        first = {sha: rel for rel, (_, sha) in sorted(manifest.splits[a].files.items())}
        for b in names[i + 1:]:
            out[f"{a}_{b}"] = [(rel, first[sha]) for rel, (_, sha) in sorted(manifest.splits[b].files.items())
                               if sha in first]
    return out


def manifest_changes(recorded: DataManifest, current: DataManifest) -> dict[str, dict[str, list[str]]]:
    """Per split: files added, removed and changed (by content) since `recorded`; folders (named with
    a trailing /) where only the committed tree of `recorded` is at hand."""
    out: dict[str, dict[str, list[str]]] = {}
    for name in sorted(set(recorded.splits) | set(current.splits)):
        was, now = recorded.splits.get(name, SplitFiles({})), current.splits.get(name, SplitFiles({}))
        if not was.listed:
            folders = _folder_changes(was.folders(), now.folders())
            if folders:
                out[name] = folders
            continue
        before, after = was.files, now.files
        if before == after:
            continue
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        changed = sorted(rel for rel in set(before) & set(after) if before[rel][1] != after[rel][1])
        if added or removed or changed:
            out[name] = {"added": added, "removed": removed, "changed": changed}
    return out


def _folder_changes(before: dict[str, Folder], after: dict[str, Folder]) -> dict[str, list[str]]:
    """Folders added and removed, and those whose own files changed, from two trees."""
    def shown(folder: str) -> str:
        return f"{folder}/" if folder else "./"

    if before[""][2] == after[""][2]:
        return {}
    return {"added": [shown(f) for f in sorted(set(after) - set(before))],
            "removed": [shown(f) for f in sorted(set(before) - set(after))],
            "changed": [shown(f) for f in sorted(set(before) & set(after)) if before[f][3] != after[f][3]]}


def describe_changes(changes: dict[str, dict[str, list[str]]], limit: int = 3) -> str:
    """'train: 1 added (patch_0009.npz), 2 changed (…); test: 1 removed (…)'."""
    parts = []
    for split, kinds in changes.items():
        bits = []
        for kind in ("added", "removed", "changed"):
            names = kinds[kind]
            if names:
                shown = ", ".join(names[:limit]) + (f", … {len(names) - limit} more" if len(names) > limit else "")
                # folders (the committed tree, without this machine's per-file listing): "./" is the split's top
                what = f"folder{'s' * (len(names) > 1)} " if all(n.endswith("/") for n in names) else ""
                bits.append(f"{len(names)} {what}{kind} ({shown})")
        parts.append(f"{split}: " + ", ".join(bits))
    return "; ".join(parts)

