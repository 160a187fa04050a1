"""Held-out evaluation: predictions over a split, and the classification metrics a model card needs."""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.training.data.loader import make_loader

ECE_BINS = 15  # Guo et al. 2017, "On Calibration of Modern Neural Networks"
TTA_FLIP_DIMS = {"hflip": -1, "vflip": -2}  # image batches (N, C, H, W): width, height


@torch.no_grad()
def predict_with_tta(model: nn.Module, dataset: Dataset, cfg: WorkflowConfig, device: torch.device,
                     tta: tuple[str, ...] | list[str]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The plain logits, the test-time-augmented ones (None without `tta`) and the targets, from one
    pass: each batch is also seen flipped (finalization.tta), and the augmented result is the log of
    the views' averaged class probabilities; a segmentation output is flipped back before averaging."""
    loader = make_loader(dataset, cfg, train=False, device=device, seed=cfg.reproducibility.seed)
    model.eval()
    plain, augmented, targets = [], [], []
    for inputs, labels in loader:
        inputs = inputs.to(device)
        out = model(inputs).float()
        plain.append(out.cpu())
        if tta:
            views = [out.log_softmax(1)]
            for name in tta:
                dim = TTA_FLIP_DIMS[name]
                flipped = model(inputs.flip(dim)).float()
                views.append((flipped.flip(dim) if flipped.ndim == 4 else flipped).log_softmax(1))
            augmented.append((torch.logsumexp(torch.stack(views), 0) - math.log(len(views))).cpu())
        targets.append(torch.as_tensor(labels))
    return torch.cat(plain), (torch.cat(augmented) if tta else None), torch.cat(targets).long()


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, Any]:
    probs = logits.softmax(1)
    pred = probs.argmax(1)
    n = len(targets)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((targets, pred), torch.ones_like(targets), accumulate=True)
    per_class = [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
                 for row in per_class_scores(confusion)]
    out: dict[str, Any] = {
        "samples": n, "accuracy": float((pred == targets).float().mean()),
        "nll": float(nn.functional.cross_entropy(logits, targets)),
        "macro_f1": macro_f1(confusion),
        "per_class": per_class, "confusion": confusion.tolist(),
        "ece": expected_calibration_error(probs, targets),
        "mcc": matthews_corrcoef(confusion),
    }
    if num_classes > 5:
        top5 = logits.topk(5, dim=1).indices
        out["top5_accuracy"] = float((top5 == targets[:, None]).any(1).float().mean())
    return out


def per_class_scores(confusion: torch.Tensor) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class from a confusion matrix (rows: true class);
    a score with nothing to divide by is 0, as scikit-learn's zero_division=0."""
    c = confusion.double()
    rows = []
    for k in range(c.shape[0]):
        tp, predicted, actual = float(c[k, k]), float(c[:, k].sum()), float(c[k].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": k, "precision": precision, "recall": recall, "f1": f1, "support": int(actual),
                     "predicted": int(predicted)})
    return rows


def macro_f1(confusion: torch.Tensor) -> float:
    """The mean F1 of the classes that occur in the truth or the predictions (scikit-learn's
    f1_score(average="macro") over the labels seen)."""
    seen = [row["f1"] for row in per_class_scores(confusion) if row["support"] or row["predicted"]]
    return sum(seen) / len(seen) if seen else 0.0


def segmentation_metrics(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """The classification figures over pixels (accuracy, per-class P/R/F1, confusion, NLL, ECE, MCC)
    plus each class's IoU and their mean."""
    pixels = logits.movedim(1, -1).reshape(-1, num_classes)
    out = classification_metrics(pixels, targets.flatten(), num_classes)
    out.pop("top5_accuracy", None)
    confusion = torch.tensor(out["confusion"])
    out["iou_per_class"] = iou_per_class(confusion, present_only=False)
    present = iou_per_class(confusion)
    out["mean_iou"] = sum(present) / len(present) if present else 0.0
    out["samples"] = int(targets.shape[0])
    out["pixels"] = int(targets.numel())
    return out


def iou_per_class(confusion: torch.Tensor, present_only: bool = True) -> list[float]:
    """Intersection over union of each class (rows: true class). present_only: the classes that
    occur in the truth or the predictions (an absent class has no IoU to average)."""
    c = confusion.double()
    tp = c.diagonal()
    union = c.sum(0) + c.sum(1) - tp
    return [float(t / u) if u > 0 else (0.0 if not present_only else None)  # type: ignore[misc]
            for t, u in zip(tp, union) if u > 0 or not present_only]


def matthews_corrcoef(confusion: torch.Tensor) -> float:
    """Multiclass Matthews correlation (Gorodkin's R_K) from a confusion matrix (rows: true class):
    1 perfect, 0 no better than chance, negative worse; 0 when a side has one class only."""
    c = confusion.double()
    total, correct = c.sum(), c.diagonal().sum()
    predicted, actual = c.sum(0), c.sum(1)
    numerator = correct * total - (predicted * actual).sum()
    denominator = ((total ** 2 - (predicted ** 2).sum()) * (total ** 2 - (actual ** 2).sum())).sqrt()
    return float(numerator / denominator) if float(denominator) > 0 else 0.0


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Mean |accuracy − confidence| over equal-width confidence bins, weighted by their share."""
    confidence, pred = probs.max(1)
    correct = (pred == targets).float()
    ece = 0.0
    edges = torch.linspace(0, 1, bins + 1)
    for lo, hi in itertools.pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += float(inside.float().mean()) * abs(float(correct[inside].mean()) - float(confidence[inside].mean()))
    return ece if math.isfinite(ece) else float("nan")
