"""Weighted sampling: the weights come from the stored targets (never through a transform), and under
DDP the ranks share one weighted draw per epoch, each its part."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mlflow_core.config import load_config_text  # noqa: E402
from mlflow_core.training.data.sampling import (  # noqa: E402
    DistributedWeightedSampler,
    balanced_sample_weights,
    target_reader,
)
from mlflow_core.training.data.sources import build_data  # noqa: E402
from tests.unit.training.test_segmentation import SEGMENTATION, make_tiles  # noqa: E402


def _skewed_weights(n=400, rare_every=10):
    labels = torch.tensor([1 if i % rare_every == 0 else 0 for i in range(n)])
    counts = torch.bincount(labels).double()
    return labels, (1.0 / counts)[labels]


def test_ranks_share_one_draw_each_its_part():
    _labels, weights = _skewed_weights(n=401)
    parts = [list(DistributedWeightedSampler(weights, 3, rank, seed=7)) for rank in range(3)]
    assert [len(p) for p in parts] == [134, 134, 134]  # ceil(401 / 3) each, as the step count assumes
    whole = torch.multinomial(weights, 402, replacement=True, generator=torch.Generator().manual_seed(7)).tolist()
    assert [i for trio in zip(*parts) for i in trio] == whole  # interleaved, the parts are the one draw


def test_the_draw_balances_the_classes_and_depends_on_the_epoch_alone():
    labels, weights = _skewed_weights()  # 10 % rare
    sampler = DistributedWeightedSampler(weights, 2, 1, seed=0)
    sampler.set_epoch(3)
    first = list(sampler)
    rare_share = labels[first].float().mean().item()
    assert 0.35 < rare_share < 0.65  # uniform would give 0.10
    again = DistributedWeightedSampler(weights, 2, 1, seed=0)
    again.set_epoch(3)
    assert list(again) == first  # what a resume mid-epoch relies on
    again.set_epoch(4)
    assert list(again) != first


def test_pixel_weights_are_read_from_the_stored_masks_past_random_crops(tmp_path):
    """With a random crop in the pipeline, reading targets through the dataset would weigh crops
    (different every call) and draw from the global RNG; the stored masks give fixed weights."""
    from mlflow_core.config.recipe import AugmentationSection
    from mlflow_core.training.augment import with_augmentation

    make_tiles(tmp_path / "tiles")
    cfg = load_config_text(SEGMENTATION.format(epochs=1, sampling="pixel_balanced"), "seg.yaml")
    raw = build_data(cfg, tmp_path).train
    cropped = with_augmentation(build_data(cfg, tmp_path),
                                AugmentationSection(random_resized_crop=16, crop_scale=[0.1, 0.3])).train
    assert tuple(cropped[0][1].shape) == (16, 16)  # the pipeline does crop
    rng_before = torch.get_rng_state()
    weights = balanced_sample_weights(cropped, 3, "pixel_balanced")
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(weights, balanced_sample_weights(raw, 3, "pixel_balanced"))
    assert tuple(target_reader(cropped)(0).shape) == (32, 32)


def test_targets_through_subsets_and_concatenations_match_the_samples():
    from torch.utils.data import ConcatDataset, Subset, TensorDataset

    a = TensorDataset(torch.zeros(5, 1), torch.arange(5))
    b = TensorDataset(torch.zeros(4, 1), torch.arange(10, 14))
    pooled = Subset(ConcatDataset([a, b]), [8, 0, 5, 4, 6])
    read = target_reader(pooled)
    assert [int(read(i)) for i in range(len(pooled))] == [int(pooled[i][1]) for i in range(len(pooled))]
