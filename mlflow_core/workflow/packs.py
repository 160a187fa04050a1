"""Packed data: each split of an NPZ folder as two uncompressed `.npy` arrays that `numpy.load(...,
mmap_mode="r")` opens, so that a batch is one gather from memory-mapped pages instead of one zip
archive opened, decompressed and copied per sample.

A pack is a cache derived from the source files, which stay the truth. It lives under
`.wf/cache/packs/<split>-<key>/` (machine-local, git-ignored), where the key is a digest of the
source files' names and contents (their sha256, from the same stat cache the data manifests use), the
array keys read and the pack format: a pack whose source drifted has another key, so it is never
used for the wrong files; `wf data pack` builds the new one and removes the stale one.

A pack is written into a temporary folder, each file fsynced, and renamed into place: a pack that
exists is complete. Each sample is stored as the NPZ holds it (its dtype: uint8, uint16 digital
numbers, float32), channels first, as `NpzPatchDataset` reads it. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_core.atomic import STORAGE_ERRNOS, storage_error
from mlflow_core.errors import DataError, StorageError
from mlflow_core.workflow import jsontext
from mlflow_core.workflow.datafiles import StatCache
from mlflow_core.workflow.npz import npz_files, read_sample

PACK_FORMAT = 1
MANIFEST = "pack.json"


def packs_dir(project_root: Path) -> Path:
    return project_root / ".wf" / "cache" / "packs"


def pack_key(files: list[Path], cache: StatCache, image_key: str, target_key: str) -> str:
    """The digest a split's pack is named by: what it was built from, and how."""
    digest = hashlib.sha256(f"wf-pack {PACK_FORMAT} {image_key} {target_key}\n".encode())
    for path in files:
        digest.update(f"{path.name}\0{cache.sha256(path)}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Pack:
    """A split's pack on disk, as its manifest describes it."""
    folder: Path
    split: str
    samples: int
    image_shape: tuple[int, ...]
    image_dtype: str
    target_shape: tuple[int, ...]
    target_dtype: str
    key: str
    scaled: bool = False  # images stored as uint8 pixels that read as value / 255 (ImageFolder)

    @property
    def images(self) -> Path:
        return self.folder / "images.npy"

    @property
    def targets(self) -> Path:
        return self.folder / "targets.npy"

    def source_files(self) -> list[Path]:
        """Each sample's source file, in pack order: what a message about a sample names."""
        raw = jsontext.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        return [Path(raw["source"]) / name for name in raw.get("names", [])]

    def source_mask_files(self) -> list[Path] | None:
        """Each sample's mask file, where masks are files of their own (None: in the sample's file)."""
        raw = jsontext.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        return [Path(raw["source"]) / name for name in raw["mask_names"]] if raw.get("mask_names") else None

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in (self.images, self.targets))

    @classmethod
    def read(cls, folder: Path) -> Pack:
        """The pack in `folder`; DataError when its manifest or arrays are not what it says."""
        import numpy as np

        try:
            raw = jsontext.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            pack = cls(folder, raw["split"], int(raw["samples"]), tuple(raw["image_shape"]), raw["image_dtype"],
                       tuple(raw["target_shape"]), raw["target_dtype"], raw["key"], bool(raw.get("scaled", False)))
            if raw.get("format") != PACK_FORMAT:
                raise ValueError(f"format {raw.get('format')}, this wf reads {PACK_FORMAT}")
            for path, shape, dtype in ((pack.images, pack.image_shape, pack.image_dtype),
                                       (pack.targets, pack.target_shape, pack.target_dtype)):
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                if array.shape != (pack.samples, *shape) or str(array.dtype) != dtype:
                    raise ValueError(f"{path.name} holds {array.shape} {array.dtype}")
                expected = array.offset + array.nbytes
                if path.stat().st_size < expected:
                    raise ValueError(f"{path.name} is truncated ({path.stat().st_size} of {expected} bytes)")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{folder}: not a usable data pack ({exc}); build it again with `wf data pack`") from None
        return pack


def find_pack(project_root: Path, split: str, key: str) -> Pack | None:
    folder = packs_dir(project_root) / f"{split}-{key[:16]}"
    if not (folder / MANIFEST).is_file():
        return None
    pack = Pack.read(folder)
    return pack if pack.key == key else None


def build_pack(project_root: Path, folder: Path, split: str, cache: StatCache, *, image_key: str,
               target_key: str, segmentation: bool = False,
               on_progress: Callable[[int, int], None] | None = None) -> tuple[Pack, bool]:
    """The NPZ split's pack, built unless a current one exists; (pack, built)."""
    files = npz_files(folder)
    if not files:
        raise DataError(f"{folder}: no .npz files found (data.path)")
    key = pack_key(files, cache, image_key, target_key)
    cache.save()
    existing = find_pack(project_root, split, key)
    if existing is not None:
        return existing, False
    return write_pack(project_root, split, key, folder, [p.name for p in files],
                      lambda i: read_sample(files[i], image_key, target_key, segmentation),
                      {"image_key": image_key, "target_key": target_key}, on_progress), True


def write_pack(project_root: Path, split: str, key: str, source: Path, names: list[str],
               read: Callable[[int], tuple[Any, Any]], meta: dict[str, Any],
               on_progress: Callable[[int, int], None] | None = None, scaled: bool = False) -> Pack:
    """Write sample i = read(i) for every name into a new pack; every sample must share the first
    one's shape and dtype (a pack is one array): the message names the first that does not. Written
    into a temporary folder, fsynced and renamed: a pack that exists is complete, and a failure
    (bad data, a full disk, Ctrl-C) leaves none. The split's earlier packs are removed after."""
    root = packs_dir(project_root)
    final = root / f"{split}-{key[:16]}"
    tmp = root / f".{final.name}.{os.getpid()}.tmp"
    first_image, first_target = read(0)
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_arrays(tmp, source, names, read, (first_image, first_target), on_progress)
        manifest = {"format": PACK_FORMAT, "split": split, "key": key, "samples": len(names),
                    "image_shape": list(first_image.shape), "image_dtype": str(first_image.dtype),
                    "target_shape": list(first_target.shape), "target_dtype": str(first_target.dtype),
                    "scaled": scaled, "source": str(source), "names": names, **meta,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        for name in ("images.npy", "targets.npy", MANIFEST):
            fd = os.open(tmp / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in STORAGE_ERRNOS:
            raise StorageError(f"{final}: the data pack cannot be written: {STORAGE_ERRNOS[exc.errno]}; the source "
                               "files are untouched and no partial pack is left.",
                               hint="Free space and run `wf data pack` again, or set data.pack: off.") from None
        raise storage_error(final, exc) from None
    except BaseException:  # bad data, Ctrl-C: no partial pack stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_stale(root, split, source, final)
    return Pack.read(final)


def _write_arrays(folder: Path, source: Path, names: list[str], read: Callable[[int], tuple[Any, Any]],
                  first: tuple[Any, Any], on_progress: Callable[[int, int], None] | None) -> None:
    """images.npy and targets.npy in `folder`, flushed: one row per name, each of the first's
    (read(0)'s) shape."""
    import numpy as np

    first_image, first_target = first
    images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=first_image.dtype,
                                       shape=(len(names), *first_image.shape))
    targets = np.lib.format.open_memmap(folder / "targets.npy", mode="w+", dtype=first_target.dtype,
                                        shape=(len(names), *first_target.shape))
    for i, name in enumerate(names):
        image, target = (first_image, first_target) if i == 0 else read(i)
        if image.shape != first_image.shape or image.dtype != first_image.dtype:
            raise DataError(f"{source / name}: image {image.shape} {image.dtype}, where {names[0]} has "
                            f"{first_image.shape} {first_image.dtype}: a pack holds samples of one shape and "
                            "dtype (resize or convert them — for ImageFolder, data.image_size — or set "
                            "data.pack: off)")
        if target.shape != first_target.shape:
            raise DataError(f"{source / name}: its target has shape {target.shape}, where {names[0]}'s has "
                            f"{first_target.shape}")
        images[i] = image
        targets[i] = target
        if on_progress and (i + 1) % 256 == 0:
            on_progress(i + 1, len(names))
    for array in (images, targets):
        array.flush()


def _remove_stale(root: Path, split: str, source: Path, final: Path) -> None:
    """The packs of earlier versions of this split's files."""
    for stale in root.glob(f"{split}-*"):
        if stale != final and (stale / MANIFEST).is_file():
            try:
                if jsontext.loads((stale / MANIFEST).read_text()).get("source") == str(source):
                    shutil.rmtree(stale, ignore_errors=True)
            except (OSError, ValueError):
                pass


def pack_project_data(cfg: Any, project_root: Path, on_message: Callable[[str], None] | None = None
                      ) -> dict[str, dict[str, Any]]:
    """Pack every split of the project's NPZ data (train, val, and test when present); what each
    pack holds, for the command's table and setup's evidence. DataError for other sources."""
    from mlflow_core.workflow.datafiles import stat_cache

    if cfg.data.source != "npz":
        raise DataError(f"data.source {cfg.data.source!r}: only NPZ folders, ImageFolder and CSV images are packed; "
                        "digits are in memory already, and custom data is read by your own code")
    root = (project_root / cfg.data.path).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (data.path = {cfg.data.path!r})")
    say = on_message or (lambda _m: None)
    segmentation = cfg.task == "segmentation"
    target_key = cfg.data.mask_key if segmentation else cfg.data.label_key
    cache, out = stat_cache(project_root), {}
    for split in ("train", "val", "test"):
        if not (root / split).is_dir():
            continue
        t0 = time.perf_counter()
        pack, built = build_pack(project_root, root / split, split, cache, image_key=cfg.data.image_key,
                                 target_key=target_key, segmentation=segmentation,
                                 on_progress=lambda done, total, s=split: say(f"{s}: {done}/{total} samples"))
        out[split] = describe(project_root, pack, built, time.perf_counter() - t0, say)
    cache.save()
    return out


def describe(project_root: Path, pack: Pack, built: bool, seconds: float,
             say: Callable[[str], None]) -> dict[str, Any]:
    """A split's pack for setup's evidence and the command's output (said in one line)."""
    say(f"{pack.split}: {'packed' if built else 'already packed'}, {pack.samples} samples {pack.image_dtype} "
        f"{'×'.join(map(str, pack.image_shape))}, {pack.nbytes() / 2**20:.1f} MiB" + (f" in {seconds:.1f} s" if built else ""))
    return {"samples": pack.samples, "image_shape": list(pack.image_shape), "dtype": pack.image_dtype,
            "bytes": pack.nbytes(), "built": built, "seconds": round(seconds, 2),
            "folder": pack.folder.relative_to(project_root).as_posix(), "key": pack.key}
