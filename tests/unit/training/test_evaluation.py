"""The final report's figures agree with the libraries people check them with: per-class precision,
recall and F1, macro F1, MCC and IoU with scikit-learn's, the calibration error with torchmetrics',
on the same predictions (skewed, with a class never predicted and one never present)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
metrics = pytest.importorskip("sklearn.metrics")

from mlflow_core.training.evaluation import (  # noqa: E402
    ECE_BINS,
    classification_metrics,
    segmentation_metrics,
)


def _predictions(seed: int, n: int = 600, classes: int = 7):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, classes - 1, (n,), generator=generator)  # the last class never occurs
    logits = torch.randn(n, classes, generator=generator)
    logits[torch.arange(n), targets] += 1.5 * torch.rand(n, generator=generator)  # better than chance
    logits[:, 2] -= 10  # class 2 never predicted
    return logits, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_figures_agree_with_scikit_learn_and_torchmetrics(seed):
    logits, targets = _predictions(seed)
    ours = classification_metrics(logits, targets, 7)
    y, p = targets.numpy(), logits.argmax(1).numpy()
    precision, recall, f1, support = metrics.precision_recall_fscore_support(y, p, labels=range(7), zero_division=0)
    for row in ours["per_class"]:
        k = row["class"]
        assert row["precision"] == pytest.approx(precision[k], abs=5e-5)
        assert row["recall"] == pytest.approx(recall[k], abs=5e-5) and row["support"] == support[k]
        assert row["f1"] == pytest.approx(f1[k], abs=5e-5)
    assert ours["macro_f1"] == pytest.approx(metrics.f1_score(y, p, average="macro", zero_division=0), abs=1e-9)
    assert ours["mcc"] == pytest.approx(metrics.matthews_corrcoef(y, p), abs=1e-9)
    assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(y, p), abs=1e-6)  # float32
    assert ours["nll"] == pytest.approx(metrics.log_loss(y, logits.softmax(1).numpy(), labels=range(7)), abs=1e-5)
    assert ours["top5_accuracy"] == pytest.approx(metrics.top_k_accuracy_score(y, logits.numpy(), k=5, labels=range(7)))
    assert np.array_equal(ours["confusion"], metrics.confusion_matrix(y, p, labels=range(7)))
    torchmetrics = pytest.importorskip("torchmetrics.classification")
    ece = torchmetrics.MulticlassCalibrationError(num_classes=7, n_bins=ECE_BINS, norm="l1")(logits.softmax(1), targets)
    assert ours["ece"] == pytest.approx(float(ece), abs=1e-5)


def test_segmentation_iou_agrees_with_scikit_learn():
    logits, targets = _predictions(3, n=4 * 16 * 16, classes=4)
    ours = segmentation_metrics(logits.reshape(4, 16, 16, 4).movedim(-1, 1), targets.reshape(4, 16, 16), 4)
    y, p = targets.numpy(), logits.argmax(1).numpy()
    jaccard = metrics.jaccard_score(y, p, labels=range(4), average=None, zero_division=0)
    assert ours["iou_per_class"] == pytest.approx(list(jaccard), abs=1e-9)
    present = sorted(set(y) | set(p))
    assert ours["mean_iou"] == pytest.approx(metrics.jaccard_score(y, p, labels=present, average="macro"), abs=1e-9)
