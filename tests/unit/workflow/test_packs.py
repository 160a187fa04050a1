"""Packed data (workflow/packs.py, training/data/packed.py: PackedDataset): the same samples as the files,
a batch gathered at once, a pack never used for other files, and bad input refused whole."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mlflow_core.errors import DataError
from mlflow_core.training.data.datasets import NormalizedDataset, NpzMaskDataset, NpzPatchDataset
from mlflow_core.training.data.loader import collate_batches
from mlflow_core.training.data.packed import GatheredBatch, PackedDataset
from mlflow_core.workflow.datafiles import StatCache
from mlflow_core.workflow.npz import npz_files
from mlflow_core.workflow.packs import build_pack, find_pack, pack_key, packs_dir


def _write(folder, n=10, shape=(6, 8, 8), dtype=np.uint16, channels_last=False, mask=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 10000, size=shape).astype(dtype)
        if channels_last:
            image = np.moveaxis(image, 0, -1)
        target = rng.integers(0, 3, size=shape[1:]) if mask else np.int64(i % 3)
        np.savez_compressed(folder / f"p_{i:03d}.npz", image=image, **{"mask" if mask else "label": target})


def _pack(tmp_path, folder, **kw):
    return build_pack(tmp_path, folder, "train", StatCache(tmp_path / "stat.sqlite"), image_key="image",
                      target_key=kw.pop("target_key", "label"), **kw)


@pytest.mark.parametrize("dtype, channels_last", [(np.uint16, False), (np.float32, True), (np.uint8, False)])
def test_a_pack_holds_what_the_files_hold_and_gathers_a_batch_at_once(tmp_path, dtype, channels_last):
    folder = tmp_path / "data" / "train"
    _write(folder, dtype=dtype, channels_last=channels_last)
    pack, built = _pack(tmp_path, folder)
    assert built and pack.image_dtype == np.dtype(dtype).name and pack.image_shape == (6, 8, 8)
    files, packed = NpzPatchDataset(folder), PackedDataset(pack)
    for i in range(len(files)):
        (a, la), (b, lb) = files[i], packed[i]
        assert torch.equal(a, b) and a.dtype == b.dtype == torch.float32 and la == lb
    indices = [7, 2, 9, 0]
    batch = packed.__getitems__(indices)
    assert isinstance(batch, GatheredBatch)
    expected = collate_batches([files[i] for i in indices])
    assert torch.equal(collate_batches(batch)[0], expected[0]) and torch.equal(collate_batches(batch)[1], expected[1])
    assert packed.labels() == files.labels()
    assert _pack(tmp_path, folder)[1] is False  # current: not built again


def test_normalisation_of_a_gathered_batch_equals_one_sample_at_a_time(tmp_path):
    folder = tmp_path / "data" / "train"
    _write(folder)
    packed = PackedDataset(_pack(tmp_path, folder)[0])
    mean, std = torch.full((6, 1, 1), 5000.0), torch.full((6, 1, 1), 2900.0)
    normalized = NormalizedDataset(packed, mean, std)
    inputs, labels = normalized.__getitems__([3, 1])
    assert torch.equal(inputs, torch.stack([normalized[3][0], normalized[1][0]]))
    assert labels.tolist() == [normalized[3][1], normalized[1][1]]


def test_masks_are_packed_with_their_images(tmp_path):
    folder = tmp_path / "data" / "train"
    _write(folder, mask=True)
    pack, _ = _pack(tmp_path, folder, target_key="mask", segmentation=True)
    files, packed = NpzMaskDataset(folder, "image", "mask"), PackedDataset(pack, segmentation=True)
    assert pack.target_shape == (8, 8)
    for i in range(len(files)):
        assert torch.equal(files[i][0], packed[i][0]) and torch.equal(files[i][1], packed[i][1])


def test_mixed_shapes_are_refused_naming_the_file_and_leave_no_partial_pack(tmp_path):
    folder = tmp_path / "data" / "train"
    _write(folder, n=4)
    np.savez_compressed(folder / "p_002.npz", image=np.zeros((6, 9, 9), np.uint16), label=np.int64(1))
    with pytest.raises(DataError, match=r"p_002\.npz: image \(6, 9, 9\) uint16, where p_000\.npz has \(6, 8, 8\)"):
        _pack(tmp_path, folder)
    assert not packs_dir(tmp_path).exists() or not any(packs_dir(tmp_path).iterdir())


def test_a_changed_file_makes_the_pack_stale_and_a_new_pack_replaces_it(tmp_path):
    folder = tmp_path / "data" / "train"
    _write(folder)
    old, _ = _pack(tmp_path, folder)
    cache = StatCache(tmp_path / "stat.sqlite")
    np.savez_compressed(folder / "p_004.npz", image=np.ones((6, 8, 8), np.uint16), label=np.int64(2))
    key = pack_key(npz_files(folder), cache, "image", "label")
    assert key != old.key and find_pack(tmp_path, "train", key) is None  # never used for the changed files
    new, built = _pack(tmp_path, folder)
    assert built and new.key == key and not old.folder.exists()
    assert PackedDataset(new)[4][0].eq(1).all()


def test_a_pack_truncated_under_a_running_job_is_an_error_naming_it_not_a_crash(tmp_path):
    folder = tmp_path / "data" / "train"
    _write(folder)
    pack, _ = _pack(tmp_path, folder)
    packed = PackedDataset(pack)
    packed.__getitems__([0, 1])  # mapped, in use
    os.truncate(pack.images, pack.images.stat().st_size // 2)
    with pytest.raises(DataError, match="truncated while in use"):
        packed.__getitems__([8, 9])
    with pytest.raises(DataError, match=r"not a usable data pack .*build it again with `wf data pack`"):
        find_pack(tmp_path, "train", pack.key)


def test_a_full_disk_while_packing_is_exit_5_and_leaves_the_data_and_no_partial_pack(tmp_path):
    """A real write limit (RLIMIT_FSIZE: the kernel refuses the write with EFBIG), not a mock."""
    from mlflow_core.workflow.scaffold import init_project

    root = init_project(tmp_path / "p", example="patches").root
    before = sorted((p.name, p.stat().st_size) for p in (root / "data" / "patches" / "train").iterdir())
    limit = "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); " \
            "resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000)); "
    r = subprocess.run([sys.executable, "-c", limit + "from mlflow_core.cli import main; main(['data', 'pack'])"],
                       cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 5, r.stderr
    assert "the data pack cannot be written" in r.stderr and "no partial pack is left" in r.stderr
    assert "Traceback" not in r.stderr
    assert [p.name for p in packs_dir(root).iterdir() if p.name.startswith(".")] == []
    assert not list(packs_dir(root).glob("train-*"))
    assert sorted((p.name, p.stat().st_size) for p in (root / "data" / "patches" / "train").iterdir()) == before


def _image_folder(root, sizes=(12, 16)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 4)):
        for c in ("cloud", "water"):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                size = sizes[i % len(sizes)]
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_imagefolder_images_are_packed_decoded_at_image_size_and_read_as_the_files_read(tmp_path):
    from mlflow_core.config import load_config_text
    from mlflow_core.training.data.sources import build_data, files_dataset, pack_data

    _image_folder(tmp_path / "data" / "shapes")
    cfg = load_config_text("data: {source: imagefolder, path: data/shapes, image_size: 10}\n", "t")
    packs = pack_data(cfg, tmp_path)
    assert packs["train"]["samples"] == 12 and packs["train"]["dtype"] == "uint8"
    assert packs["train"]["image_shape"] == [3, 10, 10]
    bundle = build_data(cfg, tmp_path)
    assert bundle.source.endswith("packed (train, val)") and bundle.class_names == ["cloud", "water"]
    files = files_dataset(cfg, tmp_path, "train")
    batch = bundle.train.__getitems__(list(range(12)))
    for i in range(12):
        assert torch.equal(files[i][0], bundle.train[i][0]) and files[i][1] == bundle.train[i][1]
        assert torch.equal(batch[0][i], files[i][0])
    # as the trainer reads it: uint8 as stored, scaled to [0, 1] on the device, the same values
    from mlflow_core.training.device_batches import device_view

    stored, prep = device_view(bundle.train)
    raw = stored.__getitems__(list(range(12)))
    assert raw[0].dtype == torch.uint8
    assert torch.equal(prep(*raw)[0], batch[0]) and torch.equal(prep(*raw)[1], batch[1])
    # images of two sizes without data.image_size: one pack cannot hold them, and says what to set
    with pytest.raises(DataError, match=r"where cloud/0\.png has .*data\.image_size"):
        pack_data(load_config_text("data: {source: imagefolder, path: data/shapes}\n", "t"), tmp_path)


def test_a_packed_split_is_gathered_in_the_training_process(tmp_path):
    """Workers would only copy every gathered batch through shared memory: the loader takes none for
    a pack (normalised or not), and keeps data.num_workers for per-sample data."""
    from mlflow_core.config import load_config_text
    from mlflow_core.training.data.loader import make_loader

    folder = tmp_path / "data" / "train"
    _write(folder)
    packed = PackedDataset(_pack(tmp_path, folder)[0])
    cfg = load_config_text("data: {num_workers: 2}\n", "t")
    cpu = torch.device("cpu")
    assert make_loader(packed, cfg, train=True, device=cpu, seed=0).num_workers == 0
    normalized = NormalizedDataset(packed, torch.zeros(6, 1, 1), torch.ones(6, 1, 1))
    assert make_loader(normalized, cfg, train=True, device=cpu, seed=0).num_workers == 0
    assert make_loader(NpzPatchDataset(folder), cfg, train=True, device=cpu, seed=0).num_workers == 2
