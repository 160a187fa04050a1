"""Every template of templates/configs validates, and runs `wf phase baseline --smoke` on generated
stand-in data of the shape it expects (6×224×224 NPZ patches, 256×256 RGB image folders, 5-band
512×512 GeoTIFF tiles named by CSV tables)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mlflow_core.config import load_config
from mlflow_core.config.schema import with_changes
from mlflow_core.environment import measure_autocast_slowdown

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((REPO / "templates" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", TEMPLATES, ids=[p.stem for p in TEMPLATES])
def test_template_validates(wf, path):
    r = wf("config", "validate", str(path))
    assert r.code == 0, r.err


def _npz_patches(root: Path, bands: int, size: int, classes: int = 3, per_split: int = 6) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
        for i in range(per_split):
            np.savez(root / split / f"patch_{i:03d}.npz", image=rng.random((bands, size, size), dtype=np.float32),
                     label=i % classes)


def _npz_tiles(root: Path, bands: int, size: int, classes: int) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2), ("test", 2)):  # 4: two steps of two micro-batches of 1
        (root / split).mkdir(parents=True)
        for i in range(count):
            np.savez(root / split / f"tile_{i:03d}.npz", image=rng.random((bands, size, size), dtype=np.float32),
                     mask=rng.integers(0, classes, (size, size)))


def _tif_tiles(root: Path, bands: int, size: int, classes: int) -> None:
    """GeoTIFF tiles and masks named by CSV tables, as the glacier competition ships them."""
    import tifffile

    rng = np.random.default_rng(0)
    (root / "tiles").mkdir(parents=True)
    for split, count in (("train", 4), ("val", 2), ("test", 2)):  # 4: two steps of two micro-batches of 1
        rows = ["path,mask"]
        for i in range(count):
            tifffile.imwrite(root / "tiles" / f"{split}_{i}.tif", rng.random((size, size, bands), dtype=np.float32))
            tifffile.imwrite(root / "tiles" / f"{split}_{i}_mask.tif", rng.integers(0, classes, (size, size), dtype=np.uint8))
            rows.append(f"tiles/{split}_{i}.tif,tiles/{split}_{i}_mask.tif")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


def _image_folder(root: Path, size: int, classes: int = 3, per_class: int = 4) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.mark.parametrize("path", [p for p in TEMPLATES if p.stem != "baseline_template"],
                         ids=[p.stem for p in TEMPLATES if p.stem != "baseline_template"])
def test_recipe_template_runs_two_steps_on_data_of_its_shape(wf, tmp_path, path):
    pytest.importorskip("torch")
    from mlflow_core.workflow.scaffold import init_project

    cfg = load_config(path)
    project = init_project(tmp_path / "p").root
    data = project / cfg.data.path
    if cfg.task == "segmentation" and cfg.data.source == "csv":
        _tif_tiles(data, bands=5, size=512, classes=cfg.data.num_classes)
    elif cfg.task == "segmentation":
        _npz_tiles(data, bands=5, size=512, classes=cfg.data.num_classes)
    elif cfg.data.source == "npz":
        _npz_patches(data, bands=6, size=224)
    else:
        _image_folder(data, size=cfg.data.image_size or 224)
    # the recipe as written, sized for a 2-core CPU: batches of 2, no worker processes, no
    # torch.compile (inductor takes minutes for a ResNet-50 here; it is tested on its own). The
    # template's fp16/bf16 stays: a smoke run on a CPU that only emulates it trains in fp32 and says so,
    # so this test takes as long on a CPU with native bf16 as on one without
    changes = {"training.batch_size": 2, "data.num_workers": 0, "training.compile": False}
    if cfg.task == "segmentation":  # a U-Net step on two 512×512 tiles takes 12 s on 2 cores: one tile each
        changes["training.batch_size"] = 1
    stages = [dict(s.model_dump(), batch_size=2) for s in cfg.curriculum.stages]
    small = with_changes(cfg, changes).model_dump(mode="json")
    small["curriculum"]["stages"] = stages
    (project / "training_config.yaml").write_text(yaml.safe_dump(small, sort_keys=False))
    assert wf("config", "validate", cwd=project).code == 0
    r = wf("phase", "baseline", "--smoke", cwd=project)
    assert r.code == 0, r.out[-3000:] + r.err
    assert f"completed │ {2 * max(1, len(stages))} " in r.out  # two steps, in each curriculum stage
    requested = cfg.training.precision
    from mlflow_core.training.precision import EMULATED_SLOWDOWN

    emulated = requested != "fp32" and measure_autocast_slowdown(requested) >= EMULATED_SLOWDOWN
    trained_in = "fp32" if emulated else requested
    rows = [line for line in r.out.splitlines() if "completed │" in line]
    assert rows and all(line.rstrip(" │").endswith(f"│ {trained_in}") for line in rows)  # the last column
    assert (f"training.precision {requested} on a CPU" in r.out) == emulated
