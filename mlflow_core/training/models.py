"""Models: a configurable simple CNN (the 4–5 conv blocks of a lab's Sentinel-2 CNN, any band count), a
U-Net that needs no extra, torchvision classifiers with the first convolution adapted to `in_channels`,
the libraries' models (training/library_models.py: torchvision, timm, smp), or a user's own module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlflow_core.config.inputs import ModelSection
from mlflow_core.errors import UserInputError
from mlflow_core.training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from mlflow_core.training.data.sources import import_target
from mlflow_core.training.library_models import apply_state, build_library_model, replace_first_conv


class SimpleCNN(nn.Module):
    """Conv-BN-ReLU blocks, each halving the resolution while it is at least 2, then global pooling.

    Pooling only while the image is large enough lets the same model take 8×8 digits and 224×224
    Sentinel-2 patches.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: list[int], input_size: int = 224,
                 batch_norm: bool = True, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        size, width_in = input_size, in_channels
        for width in channels:
            layers.append(nn.Conv2d(width_in, width, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            width_in = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.classifier = nn.Linear(width_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def build_model(cfg: ModelSection, num_classes: int, input_shape: tuple[int, ...], project_root: Path,
                record: dict[str, Any] | None = None) -> nn.Module:
    """The model `cfg` names, for the data's classes and channels. `record`, when given, receives
    what pretrained weights were loaded into it (the setup report says)."""
    in_channels = cfg.in_channels or input_shape[0]
    if cfg.in_channels and input_shape and cfg.in_channels != input_shape[0]:
        raise UserInputError(f"model.in_channels is {cfg.in_channels} but the data has {input_shape[0]} "
                             f"channels (input shape {tuple(input_shape)})")
    if cfg.library is not None:
        return build_library_model(cfg, num_classes, in_channels, record)
    if cfg.pretrained:
        library_name = f"; use 'torchvision:{cfg.name}' or 'timm:{cfg.name}'" if cfg.name.startswith(("resnet", "eff")) else ""
        raise UserInputError(f"model.pretrained: wf's own model {cfg.name!r} has no library weights{library_name}",
                             hint="Or start from weights on disk with model.init_from.")
    if cfg.name == "simple_cnn":
        size = min(input_shape[1:]) if len(input_shape) == 3 else 224
        return SimpleCNN(in_channels, num_classes, cfg.channels, size, cfg.batch_norm, cfg.dropout)
    if cfg.name == "unet":
        if len(input_shape) != 3:
            raise UserInputError(f"model.name unet needs image samples (channels, height, width), got {list(input_shape)}")
        multiple = 2 ** (len(cfg.channels) - 1)
        if any(side % multiple for side in input_shape[1:]):
            raise UserInputError(f"model.name unet with {len(cfg.channels)} levels needs sides divisible by "
                                 f"{multiple}; the data's are {list(input_shape[1:])}")
        return UNet(in_channels, num_classes, cfg.channels, cfg.batch_norm, cfg.dropout)
    if cfg.name == "custom":
        assert cfg.target is not None
        factory = import_target(cfg.target, project_root, "model.target")
        model = factory(num_classes=num_classes, in_channels=in_channels, **cfg.kwargs)
        if not isinstance(model, nn.Module):
            raise UserInputError(f"model.target {cfg.target!r} returned {type(model).__name__}, not an nn.Module")
        return model
    from torchvision import models  # weights=None: no download; pretrained weights come from disk only

    model = models.get_model(cfg.name, weights=None, num_classes=num_classes, **cfg.kwargs)
    replace_first_conv(model, in_channels)
    return model


def project_file(project_root: Path, relative: str) -> Path:
    """A file model.init_from names, which must be inside the project."""
    path = (project_root / relative).resolve()
    root = project_root.resolve()
    if path != root and root not in path.parents:
        raise UserInputError(f"model.init_from: {relative} points outside the project {root}.")
    return path


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_initial_weights(model: nn.Module, path: Path, shown: str) -> dict[str, Any]:
    """Fine-tuning: copy every tensor of `path` (a wf checkpoint or a plain state dict) whose name and
    shape fit `model`; the rest of the model keeps its fresh initialisation (a new classifier, say)."""

    if not path.is_file():
        raise UserInputError(f"model.init_from: {shown} does not exist.")
    try:
        payload = load_checkpoint(path)["model"]
    except UserInputError as exc:
        if f"no 'format: {CHECKPOINT_FORMAT}'" not in exc.message:
            raise UserInputError(f"model.init_from: {exc.message}") from None
        payload = torch.load(path, map_location="cpu", weights_only=True)  # a plain state dict
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise UserInputError(f"model.init_from: {shown} holds no state dict (a mapping of names to tensors).")
    try:
        return {"path": shown, **apply_state(model, payload, shown)}
    except UserInputError as exc:
        raise UserInputError(f"model.init_from: {exc.message}") from None


def freeze_parameters(model: nn.Module, prefixes: list[str]) -> dict[str, Any]:
    """requires_grad=False for the parameters whose name starts with one of `prefixes`; a prefix
    that matches nothing is a mistake worth stopping for."""
    frozen: list[str] = []
    for prefix in prefixes:
        names = [n for n, _ in model.named_parameters() if n == prefix or n.startswith(prefix.rstrip(".") + ".")]
        if not names:
            sample = [n for n, _ in model.named_parameters()][:4]
            raise UserInputError(f"model.freeze: {prefix!r} matches no parameter (names look like {sample}).")
        frozen.extend(names)
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    count = sum(p.numel() for n, p in model.named_parameters() if n in frozen)
    return {"prefixes": prefixes, "tensors": len(set(frozen)), "parameters": count}


class UNet(nn.Module):
    """A U-Net (Ronneberger et al. 2015): an encoder of conv blocks halving the resolution, a decoder
    upsampling with skip connections, per-pixel logits. Any band count; sides divisible by
    2^(len(channels) − 1)."""

    def __init__(self, in_channels: int, num_classes: int, channels: list[int], batch_norm: bool = True,
                 dropout: float = 0.0):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            for a, b in ((cin, cout), (cout, cout)):
                layers += [nn.Conv2d(a, b, 3, padding=1, bias=not batch_norm)]
                layers += [nn.BatchNorm2d(b)] if batch_norm else []
                layers += [nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.down = nn.ModuleList()
        width = in_channels
        for c in channels:
            self.down.append(block(width, c))
            width = c
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for c in reversed(channels[:-1]):
            self.up.append(nn.ConvTranspose2d(width, c, 2, stride=2))
            self.merge.append(block(2 * c, c))
            width = c
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.head = nn.Conv2d(width, num_classes, 1)
        self.depth = len(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth - 1:
                skips.append(x)
                x = self.pool(x)
        for up, merge in zip(self.up, self.merge):
            x = up(x)
            x = merge(torch.cat([skips.pop(), x], dim=1))
        return self.head(self.dropout(x))
