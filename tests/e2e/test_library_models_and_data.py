"""The models, weights and data users already have: torchvision's, timm's and
segmentation_models_pytorch's models; pretrained weights from the libraries' own caches (never a
download) and from a file with a first convolution adapted to more bands; CSV manifests of PNGs and
6-band GeoTIFF tiles, each through setup, baseline and `wf data pack`."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from mlflow_core.workflow.scaffold import init_project
from tests.helpers import configure

torch = pytest.importorskip("torch")

QUICK = [("reproducibility.verify_steps", "2"), ("training.epochs", "2"), ("data.test_fraction", "0.0")]


def _set_task_segmentation(project: Path) -> None:
    config = project / "training_config.yaml"
    config.write_text(re.sub(r"^task: \w+", "task: segmentation", config.read_text(), flags=re.M))


def _through_baseline(wf, project: Path) -> tuple[str, str]:
    setup = wf("phase", "setup", cwd=project)
    assert setup.code == 0, setup.out[-3000:] + setup.err
    assert wf("checklist", "tick", "reproducibility", "data_documented", "config_committed", cwd=project).code == 0
    baseline = wf("phase", "baseline", cwd=project)
    assert baseline.code in (0, 1), baseline.out[-3000:] + baseline.err  # trained; the target is another matter
    assert "status completed" in baseline.out or "status early_stopped" in baseline.out or \
        "failed_criteria" in baseline.out
    return (project / "reports" / "setup_report.md").read_text(), baseline.out


@pytest.mark.parametrize("name, extra", [("torchvision:mobilenet_v3_small", None), ("timm:resnet18", "timm")])
def test_a_library_classifier_runs_setup_and_baseline_on_six_band_patches(wf, tmp_path, name, extra):
    if extra:
        pytest.importorskip(extra)
    project = init_project(tmp_path / "p", "patches").root
    configure(project, [("model.name", f'"{name}"'), *QUICK])
    setup_report, _ = _through_baseline(wf, project)
    assert f"`{name}`:" in setup_report and "a batch of [2, 6, 32, 32] gives [2, 4]" in setup_report


def _tif_tiles(root: Path, bands: int = 6, size: int = 64, classes: int = 3) -> None:
    import tifffile

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "mask").mkdir()
    for split, count in (("train", 8), ("val", 4)):
        with (root / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["tile", "label_mask"])
            for i in range(count):
                mask = rng.integers(0, classes, (size, size), dtype=np.uint8)
                image = rng.random((bands, size, size), dtype=np.float32) + mask[None].astype(np.float32)
                tifffile.imwrite(root / "img" / f"{split}_{i}.tif", image, photometric="minisblack")
                tifffile.imwrite(root / "mask" / f"{split}_{i}.tif", mask)
                writer.writerow([f"img/{split}_{i}.tif", f"mask/{split}_{i}.tif"])


def test_smp_unet_on_six_band_geotiff_tiles_named_by_csv_runs_setup_baseline_and_pack(wf, tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    project = init_project(tmp_path / "p").root
    _tif_tiles(project / "data" / "tiles")
    _set_task_segmentation(project)
    configure(project, [("data.source", "csv"), ("data.path", "data/tiles"), ("data.path_column", "tile"),
                        ("data.mask_column", "label_mask"), ("data.num_classes", "3"),
                        ("data.normalize", "per_channel"), ("model.name", '"smp:Unet"'),
                        ("model.kwargs", "{encoder_name: resnet34}"), ("training.batch_size", "4"),
                        ("validation.metric", "val_loss"), *QUICK])
    setup_report, _ = _through_baseline(wf, project)
    assert "`smp:Unet`:" in setup_report and "a batch of [2, 6, 64, 64] gives [2, 3, 64, 64]" in setup_report
    assert "CSV data/tiles, channels: 6, the images' own (TIFF 8 of 8 sampled)" in setup_report
    packed = wf("data", "pack", "--json", cwd=project)
    assert packed.code == 0, packed.err
    assert '"dtype": "float32"' in packed.out and '"samples": 8' in packed.out


def test_a_class_id_out_of_range_names_the_mask_file(wf, tmp_path):
    import tifffile

    project = init_project(tmp_path / "p").root
    _tif_tiles(project / "data" / "tiles")
    tifffile.imwrite(project / "data" / "tiles" / "mask" / "train_3.tif", np.full((64, 64), 7, dtype=np.uint8))
    _set_task_segmentation(project)
    configure(project, [("data.source", "csv"), ("data.path", "data/tiles"), ("data.path_column", "tile"),
                        ("data.mask_column", "label_mask"), ("data.num_classes", "3")])
    r = wf("phase", "setup", cwd=project)
    said = " ".join(r.err.split())
    assert r.code == 2 and "mask/train_3.tif (the mask of " in said and "img/train_3.tif)" in said, said
    assert "the mask holds class id 7, outside 0..2" in said


def test_a_csv_manifest_of_pngs_runs_setup_baseline_and_pack_with_class_names(wf, tmp_path):
    from PIL import Image

    project = init_project(tmp_path / "p").root
    root = project / "data" / "shop"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, count in (("train", 30), ("val", 12)):
        with (root / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            for i in range(count):
                label = ("boot", "sandal", "sneaker")[i % 3]
                pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) // (1 + i % 3)
                Image.fromarray(pixels, "RGB").save(root / "images" / f"{split}_{i}.png")
                writer.writerow([f"images/{split}_{i}.png", label])
    configure(project, [("data.source", "csv"), ("data.path", "data/shop"), *QUICK])
    setup_report, _ = _through_baseline(wf, project)
    assert "CSV data/shop, channels: 3, the images' own (RGB" in setup_report
    assert "boot (0): 10, sandal (1): 10, sneaker (2): 10" in setup_report
    packed = wf("data", "pack", cwd=project)
    assert packed.code == 0 and "uint8 3×16×16" in packed.out
    # a CSV that names a file that is not there: exit 2 naming the CSV and its line
    with (root / "val.csv").open("a") as f:
        f.write("images/missing.png,boot\n")
    r = wf("phase", "setup", cwd=project)
    assert r.code == 2 and "val.csv: line 14: 'images/missing.png' does not exist" in " ".join(r.err.split())


def test_init_from_a_three_channel_resnet18_adapts_the_first_convolution_for_six_bands(wf, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    project = init_project(tmp_path / "p", "patches").root
    rgb = torchvision.models.resnet18(num_classes=1000).state_dict()
    torch.save(rgb, project / "rgb_resnet18.pt")
    configure(project, [("model.name", '"torchvision:resnet18"'), ("model.init_from", "rgb_resnet18.pt"), *QUICK])
    r = wf("phase", "setup", cwd=project)
    assert r.code == 0, r.out[-2000:]
    report = (project / "reports" / "setup_report.md").read_text()
    assert ("Starting weights (model.init_from): `rgb_resnet18.pt`; 120 of 122 tensors loaded; adapted: conv1.weight: "
            "3 → 6 input channels; kept fresh: fc.bias, fc.weight.") in report
    from mlflow_core.config import load_config
    from mlflow_core.training.library_models import adapt_input_conv
    from mlflow_core.training.models import build_model, load_initial_weights

    model = build_model(load_config(project / "training_config.yaml").model, 4, (6, 32, 32), project)
    load_initial_weights(model, project / "rgb_resnet18.pt", "rgb_resnet18.pt")
    assert torch.equal(model.conv1.weight, adapt_input_conv(6, rgb["conv1.weight"]))  # not fresh: adapted


def test_adapting_a_first_convolution_matches_timm():
    timm_models = pytest.importorskip("timm.models")
    from mlflow_core.training.library_models import adapt_input_conv

    weight = torch.randn(64, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    for channels in (1, 2, 5, 6, 13):
        assert torch.allclose(adapt_input_conv(channels, weight), timm_models.adapt_input_conv(channels, weight))


def test_pretrained_weights_come_from_the_librarys_cache_or_the_message_names_the_file(wf, tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty torch hub cache
    project = init_project(tmp_path / "p", "patches").root
    configure(project, [("model.name", '"torchvision:resnet18"'), ("model.pretrained", "true"), *QUICK])
    r = wf("phase", "setup", cwd=project)
    message = " ".join(r.err.split())
    expected = tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert r.code == 2 and f"the weights file {expected} is not on this machine" in message
    assert "model.init_from" in message and "Traceback" not in r.err
    # the file in the cache, as torchvision would have downloaded it: loaded, first convolution adapted
    expected.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), expected)
    r = wf("phase", "setup", cwd=project)
    assert r.code == 0, r.out[-2000:]
    report = (project / "reports" / "setup_report.md").read_text()
    assert "Starting weights (model.pretrained): torchvision's ResNet18_Weights.IMAGENET1K_V1" in report
    assert "adapted: conv1.weight: 3 → 6 input channels; kept fresh: fc.bias, fc.weight" in report


@pytest.mark.parametrize("name, message", [
    ("torchvision:mobilenet_v3_smal", "no such model. Did you mean 'mobilenet_v3_small'?"),
    ("timm:resnet181", "no such model. Did you mean 'resnet18'?"),
    ("smp:Unett", "no such model. Did you mean 'Unet'?"),
])
def test_an_unknown_library_model_is_exit_2_with_the_close_match(wf, tmp_path, name, message):
    pytest.importorskip({"timm": "timm", "smp": "segmentation_models_pytorch"}.get(name.split(":")[0], "torchvision"))
    project = init_project(tmp_path / "p").root
    if name.startswith("smp:"):
        _tif_tiles(project / "data" / "tiles", size=32)
        _set_task_segmentation(project)
        configure(project, [("data.source", "csv"), ("data.path", "data/tiles"), ("data.path_column", "tile"),
                            ("data.mask_column", "label_mask"), ("data.num_classes", "3")])
    configure(project, [("model.name", f'"{name}"')])
    r = wf("phase", "setup", cwd=project)
    assert r.code == 2 and message in r.err, r.err


def test_the_hand_written_unet_stays_for_small_tiles_that_a_library_encoder_shrinks_to_one_pixel():
    """Why wf keeps its own U-Net next to smp's: its depth is the config's (3 levels for 16×16 chips),
    where a ResNet encoder halves a 16×16 tile five times, to 1×1, and BatchNorm cannot train on that."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    from mlflow_core.training.models import UNet

    tile = torch.randn(1, 6, 16, 16)
    ours = UNet(6, 3, [16, 32, 64]).train()
    assert ours(tile).shape == (1, 3, 16, 16)
    library = smp.create_model("Unet", encoder_name="resnet34", encoder_weights=None, in_channels=6, classes=3).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        library(tile)
