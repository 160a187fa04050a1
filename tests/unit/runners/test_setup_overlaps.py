"""Setup compares every file of every split by sha256, beyond the decoded samples it scans."""

from __future__ import annotations

import pytest

from tests.helpers import NpzData as Cfg
from tests.helpers import write_npz as _npz

pytest.importorskip("torch")

from mlflow_core.runners import setup


def test_a_copy_the_sampled_check_missed_is_a_problem_naming_both_files(tmp_path):
    for split, values in (("train", (0, 1, 2)), ("val", (3, 4))):
        for v in values:
            _npz(tmp_path / "data" / split / f"{split}{v}.npz", v)
    _npz(tmp_path / "data" / "val" / "again.npz", 1)
    data = {"overlaps": {"train_val": 0}, "problems": []}  # as if the scan's sample missed it
    setup._files_in_two_splits(Cfg, tmp_path, data)
    assert data["file_overlaps"] == {"train_val": 1}
    assert data["problems"] == ["1 val files are copies of train files (identical sha256; e.g. val/again.npz = "
                                "train/train1.npz)"]

    named = {"overlaps": {"train_val": 1}, "problems": []}  # the decoded check named it already: said once
    setup._files_in_two_splits(Cfg, tmp_path, named)
    assert named["problems"] == [] and named["file_overlaps"] == {"train_val": 1}
