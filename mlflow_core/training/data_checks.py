"""Phase 1's data-pipeline checks: a batch loads; shapes and dtypes; NaN/Inf; label range; class
balance; train/val overlap by content hash. Returns facts and problems; never raises on findings."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mlflow_core.errors import DataError
from mlflow_core.training.data.datasets import DataBundle
from mlflow_core.training.data.loader import collate_batches

MAX_SCAN = 50_000  # samples per split scanned for NaN/Inf, labels and hashes; larger splits are sampled


def _scanned(n: int) -> Any:
    """The indices of a split of `n` samples that are scanned: all, or MAX_SCAN evenly spaced."""
    return range(n) if n <= MAX_SCAN else torch.linspace(0, n - 1, MAX_SCAN).long().tolist()


def _scan(dataset: Dataset, num_classes: int) -> dict[str, Any]:
    n = len(dataset)
    indices = _scanned(n)
    nonfinite, bad_labels, shapes, masks = [], [], Counter(), False
    first_of_shape: dict[tuple[int, ...], int] = {}
    first_of_label: dict[int, int] = {}
    counts: Counter[int] = Counter()
    hashes: dict[str, int] = {}
    lo, hi = float("inf"), float("-inf")
    for i in indices:
        x, y = dataset[i]
        x = torch.as_tensor(x)
        shapes[tuple(x.shape)] += 1
        first_of_shape.setdefault(tuple(x.shape), i)
        if not torch.isfinite(x).all():
            nonfinite.append(i)
        else:
            lo, hi = min(lo, x.min().item()), max(hi, x.max().item())
        if isinstance(y, torch.Tensor) and y.ndim >= 1:  # a mask: its pixels are the labels
            low, high = int(y.min()), int(y.max())
            masks = True
            if not (low >= 0 and high < num_classes):
                bad_labels.append((i, low if low < 0 else high))
            for cls, n in enumerate(torch.bincount(y.flatten().clamp(0, num_classes - 1), minlength=num_classes)
                                    .tolist()):
                if n:
                    counts[cls] += n
        else:
            value = y.item() if isinstance(y, torch.Tensor) else y
            if isinstance(value, float) and not value.is_integer():
                bad_labels.append((i, value))  # int() would make 2.7 a silent 2
                continue
            y = int(value)
            if not 0 <= y < num_classes:
                bad_labels.append((i, y))
            counts[y] += 1
            first_of_label.setdefault(y, i)
        hashes.setdefault(hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest(), i)
    return {"scanned": len(indices), "size": n, "nonfinite": nonfinite, "bad_labels": bad_labels, "masks": masks,
            "shapes": shapes, "first_of_shape": first_of_shape, "first_of_label": first_of_label, "counts": counts,
            "hashes": hashes, "min": lo, "max": hi}


DIGEST_SAMPLES = 64


def dataset_digests(bundle: DataBundle) -> dict[str, dict[str, Any]]:
    """Per split, its length and a hash of a fixed sample of its items (inputs and targets, 64
    evenly spaced): how a custom dataset's content is fingerprinted, since it has no files to hash."""
    out = {}
    for split in ("train", "val", "test"):
        dataset = getattr(bundle, split)
        if dataset is None:
            continue
        n = len(dataset)
        digest = hashlib.sha256(str(n).encode())
        for i in sorted({round(k * (n - 1) / max(DIGEST_SAMPLES - 1, 1)) for k in range(min(n, DIGEST_SAMPLES))}):
            x, y = dataset[i]
            digest.update(torch.as_tensor(x).contiguous().numpy().tobytes())
            digest.update(torch.as_tensor(y).contiguous().numpy().tobytes())
        out[split] = {"length": n, "sha256": digest.hexdigest()}
    return out


def _hashes(dataset: Dataset) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in _scanned(len(dataset)):
        x = torch.as_tensor(dataset[i][0])
        out.setdefault(hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest(), i)
    return out


def _where(bundle: DataBundle, split: str, index: int) -> str:
    """A sample as a person finds it: its file, or its index in the split."""
    files = getattr(getattr(bundle, split), "files", None)
    if files is not None:
        return str(files[index])
    samples = getattr(getattr(bundle, split), "samples", None)  # ImageFolder
    if samples is not None:
        return str(samples[index][0])
    return f"{split} index {index}"


def _first_of_each_shape(dataset: Dataset, shapes: dict[tuple[int, ...], int]) -> str:
    """'(6, 32, 32) ×159, (6, 16, 16) ×1 (first: data/…/patch_00000.npz)': what a person can act on."""
    files = getattr(dataset, "files", None)
    parts = []
    for shape, (count, first) in list(shapes.items())[:4]:
        where = files[first] if files is not None else f"index {first}"
        parts.append(f"{tuple(shape)} ×{count} (first: {where})")
    return ", ".join(parts)


def check_data(bundle: DataBundle, batch_size: int) -> dict[str, Any]:
    """Setup's data checks: what cannot train at all is a DataError naming the sample (mixed shapes,
    labels out of range); what trains badly is a problem (dtypes, NaN/Inf, a sample in two splits)
    or a warning (missing classes, imbalance, an input range to normalise)."""
    problems: list[str] = []
    train = _scan(bundle.train, bundle.num_classes)
    val = _scan(bundle.val, bundle.num_classes)
    _refuse_what_cannot_train(bundle, train, val)
    loader = DataLoader(bundle.train, batch_size=min(batch_size, len(bundle.train)), shuffle=False,
                        collate_fn=collate_batches)
    inputs, targets = next(iter(loader))
    if inputs.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        problems.append(f"inputs are {inputs.dtype}, expected a floating dtype")
    if targets.dtype not in (torch.int64, torch.int32):
        problems.append(f"labels are {targets.dtype}, expected integers")
    for name, scan in (("train", train), ("val", val)):
        if scan["nonfinite"]:
            problems.append(f"{len(scan['nonfinite'])} {name} samples contain NaN/Inf (first: index "
                            f"{scan['nonfinite'][0]})")
    # every pair of splits, by content: a sample in two splits inflates the held-out figures (the test
    # split is read here only for its hashes, never scored)
    scans = {"train": train, "val": val}
    if bundle.test is not None and len(bundle.test):
        scans["test"] = {"hashes": _hashes(bundle.test)}
    overlaps = {}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        if a in scans and b in scans:
            shared = sorted(set(scans[a]["hashes"]) & set(scans[b]["hashes"]))
            overlaps[f"{a}_{b}"] = len(shared)
            if shared:
                problems.append(f"{len(shared)} {b} samples also appear in {a} (identical content; e.g. "
                                f"{_where(bundle, b, scans[b]['hashes'][shared[0]])} = "
                                f"{_where(bundle, a, scans[a]['hashes'][shared[0]])})")
    counts = {str(k): v for k, v in sorted(train["counts"].items())}
    present = [v for v in train["counts"].values() if v]
    imbalance = round(max(present) / min(present), 2) if present else None
    missing = [c for c in range(bundle.num_classes) if train["counts"].get(c, 0) == 0]
    warnings = []
    if missing:
        warnings.append(f"classes with no training sample: {missing[:10]}")
    if imbalance and imbalance > 10:
        warnings.append(f"class imbalance: the largest class is {imbalance}× the smallest")
    if train["max"] - train["min"] > 1e3 or max(abs(train["min"]), abs(train["max"])) > 1e3:
        warnings.append(f"inputs range {train['min']:.3g}..{train['max']:.3g}; consider normalising")
    return {
        "source": bundle.source, "train_size": len(bundle.train), "val_size": len(bundle.val),
        "test_size": len(bundle.test) if bundle.test is not None else 0,
        "input_shape": list(bundle.input_shape), "batch_shape": list(inputs.shape),
        "input_dtype": str(inputs.dtype).replace("torch.", ""), "label_dtype": str(targets.dtype).replace("torch.", ""),
        "num_classes": bundle.num_classes, "input_min": train["min"], "input_max": train["max"],
        "class_counts_train": counts, "class_counts_val": {str(k): v for k, v in sorted(val["counts"].items())},
        "imbalance_ratio": imbalance, "overlap_train_val": overlaps["train_val"], "overlaps": overlaps,
        "class_names": bundle.class_names,
        "scanned": {"train": train["scanned"], "val": val["scanned"]},
        "problems": problems, "warnings": warnings,
    }


def _refuse_what_cannot_train(bundle: DataBundle, train: dict[str, Any], val: dict[str, Any]) -> None:
    """A batch of mixed shapes cannot even be collated; a label out of range would make
    cross-entropy index out of range: this data cannot train at all."""
    for name, scan in (("train", train), ("val", val)):
        if len(scan["shapes"]) > 1:
            dataset = getattr(bundle, name)
            shapes = {shape: (count, scan["first_of_shape"][shape]) for shape, count in scan["shapes"].items()}
            raise DataError(f"{bundle.source}: {name} samples have {len(shapes)} different shapes: "
                            f"{_first_of_each_shape(dataset, shapes)}; every sample must have the same shape"
                            + ("; set data.image_size (e.g. 224) to resize every image to one square size"
                               if bundle.source.startswith("ImageFolder") else ""))
        if scan["bad_labels"]:  # cross-entropy would index out of range: this data cannot train at all
            index, label = scan["bad_labels"][0]
            files = getattr(getattr(bundle, name), "files", None)
            where = str(files[index]) if files is not None else f"{name} index {index}"
            masks = getattr(getattr(bundle, name), "mask_files", None)
            if scan["masks"] and masks is not None and masks[index] is not None:
                where = f"{masks[index]} (the mask of {files[index] if files is not None else f'{name} index {index}'})"
            if scan["masks"]:
                raise DataError(f"{where}: the mask holds class id {label}, outside 0..{bundle.num_classes - 1} "
                                f"(data.num_classes {bundle.num_classes}; {len(scan['bad_labels'])} {name} masks "
                                "out of range); masks hold 0-based class ids")
            if isinstance(label, float):
                raise DataError(f"{where}: label {label} is not a whole number; labels must be 0-based class "
                                "indices")
            raise DataError(f"{where}: label {label} is outside 0..{bundle.num_classes - 1} "
                            f"({len(scan['bad_labels'])} {name} labels out of range; the classes are counted "
                            "from the labels unless data.num_classes says otherwise); labels must be 0-based "
                            "class indices")
    _refuse_skipped_classes(bundle, train, val)


def _refuse_skipped_classes(bundle: DataBundle, train: dict[str, Any], val: dict[str, Any]) -> None:
    """Classes counted from the labels (data.num_classes null) must all occur: one label 99 among
    0–3 would make a 100-class model whose 96 extra outputs no sample trains. Judged on fully
    scanned splits only (a sample of a large split may miss a rare class)."""
    if not bundle.counted_from_labels or train["masks"] or any(s["scanned"] < s["size"] for s in (train, val)):
        return
    seen = set(train["counts"]) | set(val["counts"])
    missing = [c for c in range(bundle.num_classes) if c not in seen]
    if not missing:
        return
    top = bundle.num_classes - 1
    split, scan = ("train", train) if top in train["first_of_label"] else ("val", val)
    where = _where(bundle, split, scan["first_of_label"][top])
    shown = ", ".join(map(str, missing[:8])) + (f" … ({len(missing)} classes)" if len(missing) > 8 else "")
    raise DataError(f"{where}: label {top} makes {bundle.num_classes} classes (data.num_classes is counted from the "
                    f"largest label), but no training or validation sample has label {shown}; a label that skips "
                    "classes is usually a mislabelled sample",
                    hint=f"fix that label, or set data.num_classes: {bundle.num_classes} in training_config.yaml "
                         "if those classes are meant to have no samples yet")


