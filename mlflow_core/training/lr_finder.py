"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates"; the fast.ai LR finder).

From a fresh model, the learning rate grows exponentially from `start_lr` to `end_lr`, one
training step each; the loss is smoothed with a bias-corrected exponential moving average and the
sweep stops once it diverges (smoothed loss above `diverge_factor` × its minimum, or non-finite).
The suggestion follows the steepest-descent rule: the learning rate at which the smoothed loss
falls fastest against log(lr). The minimum-loss learning rate ÷ 10 is reported beside it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.training.data.datasets import DataBundle
from mlflow_core.training.data.loader import make_loader
from mlflow_core.training.models import build_model
from mlflow_core.training.optim import build_optimizer, resolve_device
from mlflow_core.training.seeding import seed_everything

SKIP_START_FRACTION = 0.1  # the first points of the sweep are too noisy to rank


def lr_range_test(cfg: WorkflowConfig, project_root: Path, data: DataBundle, *, start_lr: float = 1e-7,
                  end_lr: float = 10.0, steps: int = 100, smoothing: float = 0.98,
                  diverge_factor: float = 4.0, device: torch.device | None = None) -> dict[str, Any]:
    if not (0 < start_lr < end_lr) or steps < 10:
        raise ValueError("lr_range_test needs 0 < start_lr < end_lr and at least 10 steps")

    device = device or resolve_device(cfg.training.device)
    seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)
    model = build_model(cfg.model, data.num_classes, data.input_shape, project_root).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg.training, params)
    criterion = nn.CrossEntropyLoss()
    loader = make_loader(data.train, cfg, train=True, device=device, seed=cfg.reproducibility.seed)
    factor = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs: list[float] = []
    raw: list[float] = []
    smoothed: list[float] = []
    avg, best, stop_reason = 0.0, math.inf, "reached end_lr"
    batches = iter(loader)
    model.train()
    for i in range(steps):
        lr = start_lr * factor ** i
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:
            inputs, targets = next(batches)
        except StopIteration:
            batches = iter(loader)
            inputs, targets = next(batches)
        inputs, targets = inputs.to(device), targets.to(device)
        loss = criterion(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        if not math.isfinite(value):
            stop_reason = f"loss non-finite at lr {lr:.3g}"
            break
        optimizer.step()
        avg = smoothing * avg + (1 - smoothing) * value
        s = avg / (1 - smoothing ** (i + 1))
        lrs.append(lr)
        raw.append(value)
        smoothed.append(s)
        best = min(best, s)
        if s > diverge_factor * best:
            stop_reason = f"smoothed loss above {diverge_factor:g}× its minimum at lr {lr:.3g}"
            break
    return {"lrs": lrs, "losses": raw, "smoothed": smoothed, "stop_reason": stop_reason,
            "start_lr": start_lr, "end_lr": end_lr, **suggest_lr(lrs, smoothed)}


def suggest_lr(lrs: list[float], smoothed: list[float]) -> dict[str, Any]:
    """Steepest descent of the smoothed loss against log(lr), ignoring the sweep's noisy start."""
    if len(lrs) < 5:
        return {"suggested_lr": None, "rule": "too few finite steps to suggest a learning rate",
                "min_loss_lr": lrs[smoothed.index(min(smoothed))] if smoothed else None}
    skip = max(1, int(len(lrs) * SKIP_START_FRACTION))
    slopes = [(smoothed[i + 1] - smoothed[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
              for i in range(1, len(lrs) - 1)]
    candidates = range(max(skip - 1, 0), len(slopes))
    steepest = min(candidates, key=lambda i: slopes[i]) + 1
    min_index = smoothed.index(min(smoothed))
    return {"suggested_lr": lrs[steepest], "steepest_slope": slopes[steepest - 1],
            "rule": "steepest descent of the smoothed loss against log(lr)",
            "min_loss_lr": lrs[min_index], "min_loss": smoothed[min_index],
            "min_loss_lr_div10": lrs[min_index] / 10}
