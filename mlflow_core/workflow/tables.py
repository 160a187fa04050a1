"""CSV manifests (`data.source: csv`), as Kaggle data usually comes: `data.path` holds `train.csv`,
`val.csv` and optionally `test.csv`, each with a column of file paths relative to the folder
(`data.path_column`, default `path`) and a column of labels (`data.label_column`, `label`: class
names or 0-based ids), or for segmentation a column of mask files (`data.mask_column`, `mask`).

Torch-free: the data manifest (fingerprints) and the training datasets read the same rows. A
missing column, an empty cell, a file that is not there or a path outside the folder is exit 2
naming the CSV file and its line."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_core.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Row:
    path: str  # relative to the data folder, as written
    label: str | None  # classification: a class name or id, as written
    mask: str | None  # segmentation: the mask file, relative to the data folder


def csv_splits(root: Path) -> list[str]:
    return [s for s in SPLITS if (root / f"{s}.csv").is_file()]


def read_rows(root: Path, split: str, data: Any, segmentation: bool) -> list[Row]:
    """The rows of `<root>/<split>.csv`, every file checked to exist inside `root`."""
    path = root / f"{split}.csv"
    wanted = [data.path_column, data.mask_column if segmentation else data.label_column]
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a spreadsheet's BOM is no column name
            reader = csv.DictReader(f)
            missing = [c for c in wanted if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: no column {', '.join(map(repr, missing))} (its columns: "
                                f"{', '.join(reader.fieldnames or []) or 'none'}); set data.path_column / "
                                "data.label_column / data.mask_column to the names it uses")
            rows = []
            for line, record in enumerate(reader, start=2):
                rows.append(_row(root, path, line, record, data, segmentation))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; data.source csv needs train.csv and val.csv in {root}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from None
    return rows


def _row(root: Path, path: Path, line: int, record: dict[str, Any], data: Any, segmentation: bool) -> Row:
    values = {}
    for column in (data.path_column, data.mask_column if segmentation else data.label_column):
        value = (record.get(column) or "").strip()
        if not value:
            raise DataError(f"{path}: line {line}: column {column!r} is empty")
        values[column] = value
    for column in (data.path_column, data.mask_column) if segmentation else (data.path_column,):
        target = (root / values[column]).resolve()
        if not target.is_relative_to(root.resolve()):
            raise DataError(f"{path}: line {line}: {values[column]!r} points outside {root}")
        if not target.is_file():
            raise DataError(f"{path}: line {line}: {values[column]!r} does not exist in {root}")
    return Row(values[data.path_column], None if segmentation else values[data.label_column],
               values[data.mask_column] if segmentation else None)


def class_ids(rows: list[Row]) -> tuple[dict[str, int], list[str] | None]:
    """Labels as 0-based ids: ids as written when every label is an integer, else the class names in
    sorted order (as ImageFolder orders its folders), with the names."""
    labels = sorted({r.label for r in rows if r.label is not None})
    if all(label.lstrip("-").isdigit() for label in labels):
        return {label: int(label) for label in labels}, None
    return {label: i for i, label in enumerate(labels)}, labels
