"""Data manifests on files made here: what setup records, and what a later check finds changed."""

from __future__ import annotations

import os

import pytest

from mlflow_core.errors import UserInputError
from mlflow_core.workflow import datafiles
from tests.helpers import NpzData as Cfg
from tests.helpers import write_npz as _npz


def test_a_manifest_round_trips_and_names_what_changed(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            _npz(tmp_path / "data" / split / f"p{i}.npz", i)
    cache = datafiles.stat_cache(tmp_path)
    recorded = datafiles.build_manifest(Cfg, tmp_path, cache)
    assert recorded.splits["train"].holds["arrays"] == {"image": {"shape": [6, 4, 4], "dtype": "uint16"},
                                                        "label": {"shape": [], "dtype": "int64"}}
    stored = datafiles.write_manifest(tmp_path, recorded)
    again = datafiles.read_manifest(tmp_path, stored)
    assert {n: s.files for n, s in again.splits.items()} == {n: s.files for n, s in recorded.splits.items()}
    assert again.sha256 == recorded.sha256 == os.path.basename(stored)[:-5]

    listing = datafiles.stat_listing(tmp_path / "data")
    os.utime(tmp_path / "data" / "train" / "p0.npz", ns=(1, 1))  # touched: the listing differs, the content not
    assert datafiles.stat_listing(tmp_path / "data") != listing
    _npz(tmp_path / "data" / "train" / "p1.npz", 9)
    (tmp_path / "data" / "val" / "p0.npz").unlink()
    _npz(tmp_path / "data" / "test" / "p0.npz", 0)
    changes = datafiles.manifest_changes(recorded, datafiles.build_manifest(Cfg, tmp_path, cache, describe=False))
    assert changes == {"test": {"added": ["p0.npz"], "removed": [], "changed": []},
                       "train": {"added": [], "removed": [], "changed": ["p1.npz"]},
                       "val": {"added": [], "removed": ["p0.npz"], "changed": []}}
    assert datafiles.describe_changes(changes) == ("test: 1 added (p0.npz); train: 1 changed (p1.npz); "
                                                   "val: 1 removed (p0.npz)")


def test_an_edited_manifest_is_refused(tmp_path):
    _npz(tmp_path / "data" / "train" / "p0.npz", 0)
    _npz(tmp_path / "data" / "val" / "p0.npz", 1)
    stored = datafiles.write_manifest(tmp_path, datafiles.build_manifest(Cfg, tmp_path, datafiles.stat_cache(tmp_path)))
    path = tmp_path / stored
    edited = path.read_text().replace('"": [1, ', '"": [2, ')  # a folder's file count
    assert edited != path.read_text()
    path.write_text(edited)
    with pytest.raises(UserInputError, match="does not match its name"):
        datafiles.read_manifest(tmp_path, stored)


def test_what_a_project_commits_is_a_tree_of_folders_and_a_clone_names_changes_by_folder(tmp_path):
    """One line per folder, however many files: the per-file listing lives in this machine's cache.
    Without it (a fresh clone), a change is named down to its folder; with it, down to the file."""
    for split, classes in (("train", ("cat", "dog")), ("val", ("cat", "dog"))):
        for c in classes:
            for i in range(20):
                _npz(tmp_path / "data" / split / c / f"p{i}.npz", i)
    cache = datafiles.stat_cache(tmp_path)
    recorded = datafiles.build_manifest(Cfg, tmp_path, cache)
    stored = datafiles.write_manifest(tmp_path, recorded)
    text = (tmp_path / stored).read_text()
    assert "p0.npz" not in text and len(text.splitlines()) == 12  # 80 files: a header, 6 folder lines, braces
    assert recorded.split_summaries()["train"]["files"] == 40

    _npz(tmp_path / "data" / "train" / "dog" / "p3.npz", 99)  # a changed file
    _npz(tmp_path / "data" / "val" / "bird" / "p0.npz", 1)  # a new folder
    now = datafiles.build_manifest(Cfg, tmp_path, cache, describe=False)
    with_listing = datafiles.manifest_changes(datafiles.read_manifest(tmp_path, stored), now)
    assert with_listing["train"] == {"added": [], "removed": [], "changed": ["dog/p3.npz"]}
    assert with_listing["val"]["added"] == ["bird/p0.npz"]

    datafiles.listing_path(tmp_path, os.path.basename(stored)[:-5]).unlink()  # a fresh clone
    clone = datafiles.manifest_changes(datafiles.read_manifest(tmp_path, stored), now)
    assert clone["train"] == {"added": [], "removed": [], "changed": ["dog/"]}
    assert clone["val"] == {"added": ["bird/"], "removed": [], "changed": []}
    assert "train: 1 folder changed (dog/)" in datafiles.describe_changes(clone)


def test_a_listing_in_the_cache_that_is_not_the_committed_trees_names_nothing(tmp_path):
    """The cache is this machine's: an edited listing must not make the manifest claim other files."""
    for i in range(3):
        _npz(tmp_path / "data" / "train" / f"p{i}.npz", i)
        _npz(tmp_path / "data" / "val" / f"p{i}.npz", i)
    stored = datafiles.write_manifest(tmp_path, datafiles.build_manifest(Cfg, tmp_path, datafiles.stat_cache(tmp_path)))
    listing = datafiles.listing_path(tmp_path, os.path.basename(stored)[:-5])
    listing.write_text(listing.read_text().replace("p1.npz", "p7.npz"))
    again = datafiles.read_manifest(tmp_path, stored)
    assert not again.splits["train"].listed and again.splits["train"].files == {}


def test_a_version_1_manifest_is_still_read_file_by_file(tmp_path):
    import hashlib
    import json

    body = {"version": 1, "source": "npz", "root": "data",
            "splits": {"train": {"files": 1, "bytes": 3, "sha256": "f" * 64}}}
    text = json.dumps(body, sort_keys=True)[:-1] + ', "files": {\n "train": {\n  "a.npz": [3, "' + "0" * 64 + '"]\n }\n}}\n'
    path = datafiles.manifests_dir(tmp_path) / f"{hashlib.sha256(text.encode()).hexdigest()}.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    old = datafiles.read_manifest(tmp_path, path.relative_to(tmp_path).as_posix())
    assert old.splits["train"].files == {"a.npz": (3, "0" * 64)}
    assert old.split_summaries()["train"]["sha256"] == "f" * 64


def test_the_stat_cache_remembers_across_processes_and_hashes_again_what_changed(tmp_path, monkeypatch):
    """SQLite rows, not one JSON file read and written whole: a second cache object (another process)
    finds what the first saved, and a file whose size or mtime changed is hashed again."""
    data = tmp_path / "a.bin"
    data.write_bytes(b"one")
    first = datafiles.StatCache(tmp_path / "cache" / "data-stat.sqlite")
    digest = first.sha256(data)
    first.save()

    hashed = []
    real = datafiles.sha256_file
    monkeypatch.setattr(datafiles, "sha256_file", lambda p: hashed.append(p) or real(p))
    second = datafiles.StatCache(tmp_path / "cache" / "data-stat.sqlite")
    assert second.sha256(data) == digest and hashed == []  # remembered: not read again
    data.write_bytes(b"two!")
    assert second.sha256(data) != digest and hashed == [data]


def test_a_stat_cache_that_cannot_be_written_only_costs_the_hashing(tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    cache = datafiles.StatCache(blocked / "data-stat.sqlite")  # its folder cannot be made
    data = tmp_path / "a.bin"
    data.write_bytes(b"x")
    assert cache.sha256(data) == datafiles.sha256_file(data)
    cache.save()


def test_every_file_of_every_split_is_compared_by_content(tmp_path):
    """The decoded-sample check reads at most 50,000 samples per split; the files' sha256 miss no copy."""
    for split, n in (("train", 4), ("val", 3), ("test", 3)):
        for i in range(n):
            _npz(tmp_path / "data" / split / f"{split}{i}.npz", 10 * ("train", "val", "test").index(split) + i)
    _npz(tmp_path / "data" / "test" / "copy.npz", 2)  # train2's content, under another name
    manifest = datafiles.build_manifest(Cfg, tmp_path, datafiles.stat_cache(tmp_path), describe=False)
    pairs = datafiles.files_in_two_splits(manifest)
    assert pairs == {"train_val": [], "train_test": [("copy.npz", "train2.npz")], "val_test": []}


def test_the_data_check_says_what_its_overlap_check_covered():
    from mlflow_core.workflow.facts import DataCheck

    common = dict(source="imagefolder", val_size=100, test_size=0, input_shape=[3, 8, 8], batch_shape=[4, 3, 8, 8],
                  input_dtype="float32", label_dtype="int64", num_classes=2, input_min=0.0, input_max=1.0,
                  class_counts_train={}, class_counts_val={}, imbalance_ratio=None, overlap_train_val=0,
                  overlaps={}, class_names=None, problems=[], warnings=[])
    sampled = DataCheck(train_size=80_000, scanned={"train": 50_000, "val": 100}, file_overlaps={"train_val": 0},
                        **common)
    assert sampled.overlap_coverage() == ("every file compared by sha256; decoded samples compared in a sample "
                                          "(50,000 of 80,000 train)")
    whole = DataCheck(train_size=500, scanned={"train": 500, "val": 100}, **common)
    assert whole.overlap_coverage() == "every decoded sample compared"


def test_a_damaged_stat_cache_is_started_anew(tmp_path):
    path = tmp_path / "cache" / "data-stat.sqlite"
    path.parent.mkdir()
    path.write_bytes(b"not a database, half a write perhaps" * 100)
    data = tmp_path / "a.bin"
    data.write_bytes(b"x")
    cache = datafiles.StatCache(path)
    digest = cache.sha256(data)
    cache.save()
    assert datafiles.StatCache(path).sha256(data) == digest and path.read_bytes().startswith(b"SQLite format 3")


def test_a_manifest_renamed_to_its_edited_digest_without_a_splits_own_line_is_refused(tmp_path):
    import hashlib

    _npz(tmp_path / "data" / "train" / "cat" / "p0.npz", 0)
    _npz(tmp_path / "data" / "val" / "p0.npz", 1)
    stored = datafiles.write_manifest(tmp_path, datafiles.build_manifest(Cfg, tmp_path, datafiles.stat_cache(tmp_path)))
    lines = (tmp_path / stored).read_text().splitlines(keepends=True)
    text = "".join(line for line in lines if not line.startswith('  "": ')).replace('],\n  "cat"', ']\n  "cat"')
    forged = datafiles.manifests_dir(tmp_path) / f"{hashlib.sha256(text.encode()).hexdigest()}.json"
    forged.write_text(text)
    with pytest.raises(UserInputError, match=r"cannot be read as a wf data manifest \(a split without its own"):
        datafiles.read_manifest(tmp_path, forged.relative_to(tmp_path).as_posix())
