"""Losses of the shared trainer: cross-entropy (label smoothing, class weights), focal, and focal +
soft Dice for segmentation. Each takes logits (B, C[, H, W]) and targets that are class
indices (B[, H, W]) or, after MixUp/CutMix, class probabilities (B, C)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.errors import UserInputError


class FocalLoss(nn.Module):
    """Mean over samples (pixels) of −α_y (1 − p_y)^γ log p_y (Lin et al. 2017)."""

    def __init__(self, gamma: float, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        log_p = F.log_softmax(logits, dim=1)
        if targets.dtype.is_floating_point:  # class probabilities (mixed batches)
            weights = (1 - log_p.exp()).pow(self.gamma)
            per_class = -targets * weights * log_p
            if self.weight is not None:
                per_class = per_class * self.weight.view(1, -1)
            return per_class.sum(1).mean()
        log_p_true = log_p.gather(1, targets.unsqueeze(1)).squeeze(1)
        loss = -(1 - log_p_true.exp()).pow(self.gamma) * log_p_true
        if self.weight is not None:
            loss = loss * self.weight[targets]
        return loss.mean()


class DiceLoss(nn.Module):
    """1 − mean over classes of the soft Dice coefficient, summed over the batch's pixels."""

    def __init__(self, num_classes: int, eps: float = 1.0):
        super().__init__()
        self.num_classes, self.eps = num_classes, eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(1)
        one_hot = F.one_hot(targets, self.num_classes).movedim(-1, 1).to(probs.dtype)
        dims = (0, *range(2, probs.ndim))
        intersection = (probs * one_hot).sum(dims)
        total = probs.sum(dims) + one_hot.sum(dims)
        return 1 - ((2 * intersection + self.eps) / (total + self.eps)).mean()


class WeightedSum(nn.Module):
    def __init__(self, parts: list[tuple[float, nn.Module]]):
        super().__init__()
        self.weights = [w for w, _ in parts]
        self.parts = nn.ModuleList([m for _, m in parts])

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sum(w * part(logits, targets) for w, part in zip(self.weights, self.parts))


def build_loss(cfg: WorkflowConfig, num_classes: int) -> nn.Module:
    spec = cfg.training.loss
    weight = torch.tensor(spec.class_weights, dtype=torch.float32) if spec.class_weights else None
    if weight is not None and len(weight) != num_classes:
        raise UserInputError(f"training.loss.class_weights has {len(weight)} weights and the data has "
                             f"{num_classes} classes.")
    if spec.name == "cross_entropy":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.training.label_smoothing)
    focal = FocalLoss(spec.focal_gamma, weight)
    if spec.name == "focal":
        return focal
    return WeightedSum([(spec.focal_weight, focal), (spec.dice_weight, DiceLoss(num_classes))])
