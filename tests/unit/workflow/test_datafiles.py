"""Data manifests on files made here: what setup records, and what a later check finds changed."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mlflow_core.errors import UserInputError
from mlflow_core.workflow import datafiles


class Cfg:
    class data:
        source, path = "npz", "data"


def _npz(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, image=np.full((6, 4, 4), value, dtype=np.uint16), label=np.int64(1))


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
    path.write_text(path.read_text().replace('"p0.npz"', '"p9.npz"'))
    with pytest.raises(UserInputError, match="does not match its name"):
        datafiles.read_manifest(tmp_path, stored)
