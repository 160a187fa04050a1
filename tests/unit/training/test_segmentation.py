"""Segmentation as a task: NPZ masks, a U-Net, focal + Dice loss, pixel-balanced
sampling, IoU and MCC; checked on generated tiles whose masks a U-Net can learn."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mlflow_core.config import load_config_text  # noqa: E402
from mlflow_core.training.trainer import Trainer  # noqa: E402

SEGMENTATION = """
task: segmentation
data: {{source: npz, path: tiles, num_classes: 3, sampling: {sampling}}}
model: {{name: unet, channels: [8, 16, 32]}}
training: {{device: cpu, epochs: {epochs}, batch_size: 8, learning_rate: 0.01,
           loss: {{name: focal_dice, focal_weight: 0.6, dice_weight: 0.4}}}}
early_stopping: {{enabled: false}}
validation: {{metric: val_iou}}
augmentation: {{horizontal_flip: 0.5, vertical_flip: 0.5}}
"""


def make_tiles(root, count=(48, 16), bands=5, size=32, seed=0):
    """Noise with a bright square (class 1) in band 0 and a small bright square (class 2, rare) in
    band 1; the rest background (class 0)."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), count):
        (root / split).mkdir(parents=True)
        for i in range(n):
            image = rng.normal(0, 0.3, (bands, size, size)).astype(np.float32)
            mask = np.zeros((size, size), np.int64)
            x, y = rng.integers(0, size - 12, 2)
            image[0, y:y + 12, x:x + 12] += 2.0
            mask[y:y + 12, x:x + 12] = 1
            if i % 3 == 0:  # the rare class, in a third of the tiles
                u, v = rng.integers(0, size - 4, 2)
                image[1, v:v + 4, u:u + 4] += 2.0
                mask[v:v + 4, u:u + 4] = 2
            np.savez(root / split / f"tile_{i:03d}.npz", image=image, mask=mask)


def test_segmentation_unet_learns_the_masks(tmp_path):
    make_tiles(tmp_path / "tiles")
    cfg = load_config_text(SEGMENTATION.format(epochs=6, sampling="pixel_balanced"), "seg.yaml")
    result = Trainer(cfg, tmp_path, tmp_path / "run").fit()
    last = result.metrics["epochs"][-1]
    assert last["val_iou"] > 0.5 and last["val_mcc"] > 0.5 and last["val_accuracy"] > 0.9
    assert len(last["val_iou_per_class"]) == 3 and 0 <= last["train_accuracy"] <= 1
    assert result.metrics["best"]["metric"] == "val_iou"


def test_pixel_balanced_sampling_favours_tiles_with_rare_classes(tmp_path):
    from mlflow_core.training.data.sampling import balanced_sample_weights
    from mlflow_core.training.data.sources import build_data

    make_tiles(tmp_path / "tiles")
    cfg = load_config_text(SEGMENTATION.format(epochs=1, sampling="pixel_balanced"), "seg.yaml")
    train = build_data(cfg, tmp_path).train
    weights = balanced_sample_weights(train, 3, "pixel_balanced")
    rare = torch.tensor([i % 3 == 0 for i in range(len(train))])
    assert weights[rare].min() > weights[~rare].max()


def test_flips_move_the_mask_with_its_image(tmp_path):
    from mlflow_core.config.recipe import AugmentationSection
    from mlflow_core.training.augment import with_augmentation
    from mlflow_core.training.data.sources import build_data

    make_tiles(tmp_path / "tiles")
    cfg = load_config_text(SEGMENTATION.format(epochs=1, sampling="uniform"), "seg.yaml")
    bundle = build_data(cfg, tmp_path)
    flipped = with_augmentation(bundle, AugmentationSection(horizontal_flip=1.0))
    image, mask = bundle.train[0]
    image2, mask2 = flipped.train[0]
    assert torch.equal(image2, image.flip(-1)) and torch.equal(mask2, mask.flip(-1)) and mask2.dtype == torch.int64


def test_focal_with_gamma_0_is_cross_entropy_and_dice_of_a_perfect_prediction_is_0():
    from mlflow_core.training.losses import DiceLoss, FocalLoss

    logits, targets = torch.randn(4, 3, 5, 5), torch.randint(0, 3, (4, 5, 5))
    assert torch.allclose(FocalLoss(0.0)(logits, targets), torch.nn.functional.cross_entropy(logits, targets))
    assert FocalLoss(2.0)(logits, targets) < FocalLoss(0.0)(logits, targets)
    perfect = torch.nn.functional.one_hot(targets, 3).movedim(-1, 1).float() * 50
    assert DiceLoss(3)(perfect, targets) < 1e-3


def test_iou_from_a_known_confusion_matrix():
    from mlflow_core.training.evaluation import iou_per_class, segmentation_metrics

    confusion = torch.tensor([[8, 2], [1, 4]])  # rows: truth
    assert iou_per_class(confusion) == pytest.approx([8 / 11, 4 / 7])
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1, 0, :2] = 1.0  # predicts 1, 1, 0, 0
    metrics = segmentation_metrics(logits, torch.tensor([[[1, 0, 0, 0]]]), 2)
    assert metrics["mean_iou"] == pytest.approx((2 / 3 + 1 / 2) / 2) and metrics["pixels"] == 4


@pytest.mark.parametrize("text, fragment", [
    ("task: segmentation\ndata: {source: digits, num_classes: 10}\n", "has no masks"),
    ("task: segmentation\ndata: {source: npz, path: t}\n", "needs data.num_classes"),
    ("task: segmentation\ndata: {source: npz, path: t, num_classes: 2}\naugmentation: {mixup_alpha: 0.2}\n",
     "MixUp blends labels into class probabilities"),
    ("training: {loss: {name: focal_dice}}\n", "needs task: segmentation"),
    ("data: {sampling: pixel_balanced}\n", "needs task: segmentation"),
    ("data: {num_classes: 3}\ntraining: {loss: {class_weights: [1, 2]}}\n", "2 weights for 3 classes"),
])
def test_segmentation_settings_that_do_not_fit_are_named(text, fragment):
    from mlflow_core.errors import ConfigError

    with pytest.raises(ConfigError, match=fragment):
        load_config_text(text, "bad.yaml")


def test_a_mask_of_the_wrong_size_names_the_file(tmp_path):
    from mlflow_core.errors import DataError
    from mlflow_core.training.data.sources import build_data

    make_tiles(tmp_path / "tiles")
    np.savez(tmp_path / "tiles" / "train" / "tile_000.npz", image=np.zeros((5, 32, 32), np.float32),
             mask=np.zeros((16, 16), np.int64))
    cfg = load_config_text(SEGMENTATION.format(epochs=1, sampling="uniform"), "seg.yaml")
    with pytest.raises(DataError, match=r"tile_000\.npz: mask has shape"):
        build_data(cfg, tmp_path).train[0]


def test_segmentation_through_the_phases(wf, tmp_path):
    """setup checks masks, baseline reports IoU and MCC, finalization scores the test tiles over pixels
    and exports the U-Net."""
    import json
    import shutil

    assert wf("init", "p", cwd=tmp_path).code == 0
    root = tmp_path / "p"
    make_tiles(root / "tiles", count=(32, 16))
    (root / "tiles" / "test").mkdir()
    for path in sorted((root / "tiles" / "val").glob("*.npz"))[:8]:
        shutil.move(str(path), root / "tiles" / "test")
    (root / "training_config.yaml").write_text(SEGMENTATION.format(epochs=3, sampling="pixel_balanced"))
    setup = wf("phase", "setup", cwd=root)
    assert "output [2, 3, 32, 32]" in setup.out and "3 classes" in setup.out
    assert wf("phase", "baseline", "--override-gate", "segmentation test", cwd=root).code in (0, 1)
    report = (root / "reports" / "baseline_results.md").read_text()
    assert "Val IoU" in report and "accuracy and F1 are over pixels" in report
    config = root / "training_config.yaml"
    config.write_text(config.read_text() + "finalization: {tta: [hflip, vflip]}\n")
    r = wf("phase", "finalization", "--override-gate", "segmentation test", cwd=root)
    assert r.code == 0, r.out[-2000:] + r.err
    facts = json.loads((root / ".wf" / "evidence" / "finalization.json").read_text())["facts"]
    test = facts["seeds"][0]["test"]
    assert test["pixels"] == 8 * 32 * 32 and len(test["iou_per_class"]) == 3 and "mean_iou" in facts["summary"]
    assert facts["tta"]["views"] == ["identity", "hflip", "vflip"]
    assert facts["seeds"][0]["test_without_tta"]["pixels"] == test["pixels"]
    assert {e["kind"]: e["verified"] for e in facts["exports"]} == {"state_dict": True, "torch_export": True}
    card = (root / "reports" / "final_report.md").read_text()
    assert "Mean IoU of the classes" in card and "Test-time augmentation: each model averages" in card


def test_tta_flips_a_predicted_mask_back_before_averaging(tmp_path):
    """A flip-equivariant segmenter (its logits are its input) sees the same mask in every view once
    each is flipped back, so TTA changes nothing; a classifier that looks at the left column only sees
    a different image flipped, and TTA averages the two views' probabilities."""
    from torch.utils.data import TensorDataset

    from mlflow_core.training.evaluation import predict_with_tta

    cfg = load_config_text("training: {device: cpu}\n", "t")
    images = torch.randn(6, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(6, 5, 7, dtype=torch.long)
    segmenter = torch.nn.Identity()
    plain, augmented, _ = predict_with_tta(segmenter, TensorDataset(images, masks), cfg, torch.device("cpu"),
                                           ["hflip", "vflip"])
    assert torch.allclose(augmented, plain.log_softmax(1), atol=1e-6)

    class LeftColumn(torch.nn.Module):
        def forward(self, x):
            return x[:, :, :, 0].mean(2)  # (N, 3): depends on where the left edge is

    labels = torch.zeros(6, dtype=torch.long)
    plain, augmented, _ = predict_with_tta(LeftColumn(), TensorDataset(images, labels), cfg, torch.device("cpu"),
                                           ["hflip"])
    flipped = images.flip(-1)[:, :, :, 0].mean(2)
    expected = ((plain.softmax(1) + flipped.softmax(1)) / 2).log()
    assert torch.allclose(augmented, expected, atol=1e-6) and not torch.allclose(augmented, plain.log_softmax(1))


def test_tta_needs_image_samples(wf, tmp_path):
    assert wf("init", "v", cwd=tmp_path).code == 0
    root = tmp_path / "v"
    (root / "vectors.py").write_text(
        "import torch\n\n\ndef build(**_):\n"
        "    part = lambda n: torch.utils.data.TensorDataset(torch.randn(n, 16), torch.arange(n) % 2)\n"
        "    return {'train': part(40), 'val': part(10), 'test': part(10)}\n")
    (root / "training_config.yaml").write_text("data: {source: custom, target: 'vectors:build', num_classes: 2}\n"
                                               "training: {device: cpu, epochs: 1}\nfinalization: {tta: [hflip]}\n")
    r = wf("phase", "finalization", "--override-gate", "tta check", cwd=root)
    assert r.code == 2 and "finalization.tta flips images" in r.err and "[16]" in r.err
