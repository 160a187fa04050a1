"""What a project commits for its data, at ImageNet's size: the data manifest written the earlier way
(one line per file, version 1) against the tree of folder digests (version 2), for a listing of
ImageNet's shape (1,281,167 training files in 1,000 class folders, 50,000 validation files in 1,000
folders), built in memory: sizes and sha256 are made up, the text and its size are what wf writes.

    python bench/manifest_size.py [--classes 1000] [--train 1281167] [--val 50000]
"""

from __future__ import annotations

import argparse
import hashlib
import time

from mlflow_core.workflow.datafiles import DataManifest, SplitFiles


def listing(files: int, classes: int) -> dict[str, tuple[int, str]]:
    out = {}
    for i in range(files):
        name = f"n{i % classes:08d}/n{i % classes:08d}_{i}.JPEG"
        out[name] = (110_000 + i % 9973, hashlib.sha256(name.encode()).hexdigest())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--train", type=int, default=1_281_167)
    ap.add_argument("--val", type=int, default=50_000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    splits = {"train": SplitFiles(listing(args.train, args.classes)), "val": SplitFiles(listing(args.val, args.classes))}
    manifest = DataManifest("imagefolder", "data/imagenet", splits)
    made = time.perf_counter() - t0
    t0 = time.perf_counter()
    committed = manifest.to_text()
    tree_s = time.perf_counter() - t0
    per_file = manifest.listing_text()  # the same lines as a version-1 manifest's, kept in the machine's cache
    print(f"{args.train + args.val:,} files in {args.classes:,} folders per split (listing made in {made:.1f} s)")
    print(f"one line per file (version 1; now the machine's cache): {len(per_file.encode()) / 1e6:8.1f} MB")
    print(f"tree of folders (version 2, committed):                  {len(committed.encode()) / 1e6:8.3f} MB, "
          f"{len(committed.splitlines()):,} lines, built in {tree_s:.1f} s")


if __name__ == "__main__":
    main()
