"""User code for the fault benchmark: models and datasets written the way users write them, each
with one realistic fault (or none). `run.py` copies this file into every benchmark project, and the
configs point at it with `model.target: faultlib:NAME` / `data.target: faultlib:NAME`."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

# --- data: scikit-learn's handwritten digits (real, offline), 1,797 8×8 images ----------------------

def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[order], y[order]


class SlowDataset(Dataset):
    """Decodes each sample slowly (stands in for JPEG decoding or a network file system)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, delay_s: float):
        self.x, self.y, self.delay_s = x, y, delay_s

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        time.sleep(self.delay_s)
        return self.x[i], self.y[i]


def digits(train: int = 1400, label_noise: float = 0.0, random_labels: bool = False, delay_s: float = 0.0,
           outliers: float = 0.0, outlier_scale: float = 30.0, scale: float = 1.0, val: int = 397,
           skew: float = 1.0, nan_images: int = 0):
    """Train on the first `train` digits, validate on `val` of the last 397.
    label_noise: that share of training labels replaced at random (annotation errors);
    random_labels: every label random (a broken join between images and labels);
    delay_s: per-sample loading time;
    outliers: that share of training images multiplied by `outlier_scale` (sensor glitches);
    scale: every image multiplied by it (raw sensor counts instead of 0..1);
    val: validation images (of the 397 held out);
    skew: keep every training image of class 0 and one in `skew` of the others;
    nan_images: that many training images with NaN pixels (a corrupt export)."""
    x, y = _digits()
    x = x * scale
    g = torch.Generator().manual_seed(1)
    xt, yt, xv, yv = x[:train], y[:train].clone(), x[1400:1400 + val], y[1400:1400 + val].clone()
    if random_labels:
        yt = torch.randint(0, 10, yt.shape, generator=g)
        yv = torch.randint(0, 10, yv.shape, generator=g)
    elif label_noise:
        flip = torch.rand(len(yt), generator=g) < label_noise
        yt[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
    if outliers:
        glitch = torch.rand(len(yt), generator=g) < outliers
        xt = xt.clone()
        xt[glitch] *= outlier_scale
    if skew > 1.0:
        quota = {c: round(int((yt == 0).sum()) / skew) for c in range(1, 10)}  # each other class: 1/skew of class 0
        seen: dict[int, int] = {}
        kept = []
        for i, label in enumerate(yt.tolist()):
            seen[label] = seen.get(label, 0) + 1
            if label == 0 or seen[label] <= quota[label]:
                kept.append(i)
        xt, yt = xt[kept], yt[kept]
    if nan_images:
        xt = xt.clone()
        xt[len(xt) // 2: len(xt) // 2 + nan_images, :, :2, :2] = float("nan")
    train_set = SlowDataset(xt, yt, delay_s) if delay_s else TensorDataset(xt, yt)
    return {"train": train_set, "val": TensorDataset(xv, yv)}


# --- models --------------------------------------------------------------------------------------

class MLP(nn.Module):
    """A plain ReLU MLP without normalisation."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 256, depth: int = 3,
                 first_bias: float | None = None):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        size = in_channels * 64
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(size, num_classes)
        if first_bias is not None:  # a "helpful" constant bias, e.g. copied from another model
            nn.init.constant_(self.body[1].bias, first_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class DeepSigmoid(nn.Module):
    """The 1990s network: many sigmoid layers, no normalisation, no skip connections."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 64, depth: int = 12):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        size = in_channels * 64
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.Sigmoid()]
            size = width
        layers.append(nn.Linear(size, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class HotHeadCNN(nn.Module):
    """A small CNN whose classifier is initialised far too large (a temperature bug)."""

    def __init__(self, num_classes: int, in_channels: int, scale: float = 100.0):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(64, num_classes)
        with torch.no_grad():
            self.head.weight.mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class LogProbNet(nn.Module):
    """Takes log of probabilities computed by hand: log(0) = -inf once a class probability underflows."""

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        self.fc = nn.Linear(in_channels * 64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.relu(self.fc(x.flatten(1))))
