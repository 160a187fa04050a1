"""The packed path's device side (training/device_batches.py): batches travel as stored and become
the model's input in batch; the same weights as the host path where nothing is drawn, deterministic
and exactly resumable where crops and flips are, masks following their images."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mlflow_core.config import load_config_text  # noqa: E402
from mlflow_core.training.device_batches import BatchPrep, DeviceFeed, KeptBatch, replayed  # noqa: E402


def _write(root, *, segmentation: bool, n_train=48, n_val=16, size=16, bands=4):
    """uint16 digital numbers whose first band carries the class (so that a model can learn it, and a
    mask can be read back from its image), a uint8 mask or an int label per file."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        folder = root / split
        folder.mkdir(parents=True)
        for i in range(n):
            if segmentation:
                mask = np.zeros((size, size), np.uint8)
                mask[: size // 2, : size // 2] = 1
                mask[size // 2:, size // 3:] = 2
                mask = np.rot90(mask, i % 4).copy()
            else:
                mask = np.full((size, size), i % 3, np.uint8)
            image = rng.integers(0, 3000, (bands, size, size)).astype(np.uint16)
            image[0] = mask.astype(np.uint16) * 4000 + rng.integers(0, 500, (size, size)).astype(np.uint16)
            target = {"mask": mask} if segmentation else {"label": np.int64(i % 3)}
            np.savez_compressed(folder / f"p_{i:03d}.npz", image=image, **target)


def _config(pack: str, *, segmentation: bool, augmentation: str = "{}", epochs: int = 2):
    task = "segmentation" if segmentation else "classification"
    model = "{name: unet, channels: [8, 16]}" if segmentation else "{channels: [8, 16]}"
    return load_config_text(
        f"task: {task}\n"
        f"data: {{source: npz, path: data, pack: {pack}, normalize: per_channel, num_classes: 3}}\n"
        f"training: {{device: cpu, epochs: {epochs}, batch_size: 8}}\nmodel: {model}\n"
        f"augmentation: {augmentation}\n"
        "early_stopping: {enabled: false}\nmonitoring: {check_every_n_steps: 1}\n", "t")


def _same(a, b) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("segmentation", [False, True], ids=["labels", "masks"])
def test_without_augmentation_the_device_path_trains_the_host_paths_weights(tmp_path, segmentation):
    """uint16 images and uint8 masks reach the device as stored; converted and normalised there,
    the run ends with the per-file run's weights, bit for bit."""
    from mlflow_core.training.trainer import Trainer

    _write(tmp_path / "data", segmentation=segmentation)
    files = Trainer(_config("off", segmentation=segmentation), tmp_path, None).fit()
    trainer = Trainer(_config("on", segmentation=segmentation), tmp_path, None)
    packed = trainer.fit()
    assert not trainer.train_prep.identity and not trainer.val_prep.identity  # the device path was taken
    assert trainer.train_loader.dataset.as_stored
    assert _same(files, packed)
    assert [e["val_loss"] for e in packed.metrics["epochs"]] == [e["val_loss"] for e in files.metrics["epochs"]]


AUGMENTED = "{random_resized_crop: 12, crop_scale: [0.3, 1.0], horizontal_flip: 0.5, vertical_flip: 0.5}"


@pytest.mark.parametrize("segmentation", [False, True], ids=["labels", "masks"])
def test_augmented_packed_runs_are_deterministic_and_resume_mid_epoch_exactly(tmp_path, segmentation):
    from mlflow_core.training.trainer import Trainer

    _write(tmp_path / "data", segmentation=segmentation)
    cfg = _config("on", segmentation=segmentation, augmentation=AUGMENTED)
    full = Trainer(cfg, tmp_path, tmp_path / "full").fit()
    assert full.metrics["data"]["input_shape"] == [4, 12, 12]
    again = Trainer(cfg, tmp_path, None).fit()
    assert _same(full, again)

    def signal_at(p):
        if p.stage == "train" and p.global_step == 8:  # epoch 2, its second of 6 steps
            os.kill(os.getpid(), signal.SIGTERM)

    cut = Trainer(cfg, tmp_path, tmp_path / "cut", on_progress=signal_at, stop_on_signals=True).fit()
    assert cut.status == "interrupted" and cut.metrics["steps"] == 8
    resumed = Trainer(cfg, tmp_path, tmp_path / "cut", stop_on_signals=True,
                      resume_from=tmp_path / "cut" / "checkpoints" / "resume.pt").fit()
    assert _same(full, resumed)
    assert [e["val_loss"] for e in resumed.metrics["epochs"]] == [e["val_loss"] for e in full.metrics["epochs"]]


def _mask_batch(n=64, size=16):
    """Images whose every band equals the mask (three blocks of classes), and the masks."""
    mask = torch.zeros(size, size, dtype=torch.uint8)
    mask[: size // 2, : size // 2] = 1
    mask[size // 2:, size // 4:] = 2
    masks = torch.stack([torch.rot90(mask, i % 4) for i in range(n)])
    return masks[:, None].expand(n, 3, size, size).to(torch.uint16).contiguous(), masks


def test_flips_are_drawn_per_sample_and_masks_follow_their_images_exactly():
    images, masks = _mask_batch()
    torch.manual_seed(0)
    x, y = BatchPrep(hflip=0.5, vflip=0.5)(images, masks)
    assert y.dtype == torch.int64 and x.dtype == torch.float32
    assert torch.equal(x[:, 0].long(), y)  # every pixel: the image's band is its mask's class
    flipped = [not torch.equal(y[i], masks[i].long()) for i in range(len(y))]
    assert 0 < sum(flipped) < len(y)  # per sample, not one draw for the batch
    h = [torch.equal(y[i], masks[i].long().flip(-1)) for i in range(len(y))]
    assert 0 < sum(h) < len(y)


def test_random_resized_crops_keep_masks_on_their_images_and_boxes_inside_the_image():
    images, masks = _mask_batch(n=256, size=32)
    prep = BatchPrep(crop=(24, (0.2, 1.0)), hflip=0.5)
    torch.manual_seed(1)
    boxes = prep._crop_boxes(256, 32, 32)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = (h * w).double() / (32 * 32)
    assert area.min() >= 0.2 - 0.05 and area.max() <= 1.0 and len(set(area.tolist())) > 50  # drawn per sample
    ratio = w.double() / h.double()
    assert ratio.min() > 0.7 and ratio.max() < 1.45
    torch.manual_seed(2)
    x, y = prep(images, masks)
    assert x.shape == (256, 3, 24, 24) and y.shape == (256, 24, 24) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= {0, 1, 2}
    # bilinear images against nearest masks: they differ only along the class borders
    assert (x[:, 0].round().long() == y).float().mean() > 0.9
    torch.manual_seed(2)
    x2, y2 = prep(images, masks)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # the draws are the generator's


def test_a_kept_batch_replays_to_the_prepared_batch_and_leaves_the_generator_alone():
    images, masks = _mask_batch()
    prep = BatchPrep(crop=(12, (0.3, 1.0)), vflip=0.5)
    kept = KeptBatch(images, masks, torch.get_rng_state())
    x, y = prep(images, masks)
    after = torch.get_rng_state()
    rx, ry = replayed(kept, prep)
    assert torch.equal(x, rx) and torch.equal(y, ry)
    assert torch.equal(torch.get_rng_state(), after)


def test_the_cpu_feed_passes_batches_through_and_skips_without_reading_ahead():
    batches = [(torch.full((2, 1), float(i)), torch.tensor([i, i])) for i in range(5)]
    feed = DeviceFeed(iter(batches), torch.device("cpu"), 1)
    feed.skip(2)
    first = next(feed)
    assert first.inputs is first.host_inputs and first.host_targets.tolist() == [2, 2]
    feed.drain()
    with pytest.raises(StopIteration):
        next(feed)


@pytest.mark.parametrize("segmentation", [False, True], ids=["labels", "masks"])
def test_validation_at_the_crop_size_on_the_device_equals_the_per_file_view(tmp_path, segmentation):
    """Resized and centre-cropped to the training crop's size in batch on the device, validation
    gives the figures the per-sample view of the files gives."""
    from mlflow_core.training.trainer import Trainer

    _write(tmp_path / "data", segmentation=segmentation)
    files = Trainer(_config("off", segmentation=segmentation, augmentation=AUGMENTED), tmp_path, None)
    packed = Trainer(_config("on", segmentation=segmentation, augmentation=AUGMENTED), tmp_path, None)
    files.build()
    packed.build()
    assert not packed.val_prep.identity and packed.val_prep.eval_size == 12
    packed.model.load_state_dict(files.model.state_dict())
    a, b = files.validate(), packed.validate()
    assert a.pop("val_iou_per_class", None) == b.pop("val_iou_per_class", None)
    assert a == pytest.approx(b, abs=1e-6)


def test_cutmix_of_a_segmentation_batch_pastes_each_box_with_its_mask():
    from mlflow_core.config.recipe import AugmentationSection
    from mlflow_core.training.augment import BatchMixer

    images, masks = _mask_batch(n=16, size=32)
    x, y = BatchPrep()(images, masks)  # float images on the device, int64 masks
    mixer = BatchMixer(AugmentationSection(cutmix_alpha=1.0), 3, 10, (3, 32, 32))
    torch.manual_seed(0)
    changed = 0
    for _ in range(8):
        mx, my = mixer(x, y)
        assert my.dtype == torch.int64 and torch.equal(mx[:, 0].long(), my)  # every pixel still its mask's
        changed += int(not torch.equal(my, y))
    assert changed >= 4  # boxes are drawn (some may be empty, as torchvision's are)


def test_a_segmentation_run_with_cutmix_on_the_packed_path_is_deterministic(tmp_path):
    from mlflow_core.training.trainer import Trainer

    _write(tmp_path / "data", segmentation=True)
    cfg = _config("on", segmentation=True, augmentation="{cutmix_alpha: 1.0, horizontal_flip: 0.5}", epochs=1)
    a = Trainer(cfg, tmp_path, None).fit()
    b = Trainer(cfg, tmp_path, None).fit()
    assert a.status == "completed" and a.metrics["epochs"][0]["mixed"] is True
    assert _same(a, b)


def test_a_nonfinite_dump_holds_the_inputs_the_model_saw_rebuilt_from_the_host_batches(tmp_path):
    """Windowed read-back (the accelerator path) on augmented, mixed packed batches: the dump's
    batches, replayed from each step's stored batch and generator state, equal the inputs and
    targets the model was given, step for step."""
    from mlflow_core.config.schema import with_changes
    from mlflow_core.training.checkpoint import load_checkpoint
    from mlflow_core.training.trainer import Trainer

    _write(tmp_path / "data", segmentation=False)
    cfg = with_changes(_config("on", segmentation=False, augmentation=AUGMENTED[:-1] + ", mixup_alpha: 0.4}"),
                       {"training.optimizer": "sgd", "training.learning_rate": 1.0e4, "model.batch_norm": False,
                        "monitoring.check_every_n_steps": 4})
    trainer = Trainer(cfg, tmp_path, tmp_path / "run", windowed=True)
    seen = []
    prepare = trainer.training_batch

    def recording(s, x, y):
        out = prepare(s, x, y)
        seen.append((out[0].clone(), out[1].clone()))
        return out
    trainer.training_batch = recording
    result = trainer.fit()
    assert result.status == "failed_nan"
    dump = load_checkpoint(tmp_path / "run" / result.metrics["nonfinite"]["dump"])
    first, last = dump["state_step"], dump["nonfinite_step"]
    assert last > first and len(dump["batches"]) == last - first + 1  # the window's start, then its steps
    for step, batch in zip(range(first, last + 1), dump["batches"]):
        assert torch.equal(batch["inputs"], seen[step][0]) and torch.equal(batch["targets"], seen[step][1])
