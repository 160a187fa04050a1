"""Models from the libraries users already have: `torchvision:<builder>` (any classifier
torchvision.models.list_models() knows, through get_model), `timm:<name>` (timm.create_model, the
`timm` extra) and `smp:<Arch>` (segmentation_models_pytorch, the `segmentation` extra), each built
for the data's channels and classes.

`model.pretrained: true` takes the library's own weights from its own cache (torch hub's folder,
the Hugging Face cache) and never downloads at run time: a file that is not there is exit 2 naming
it, the folder, and `model.init_from` as the way to bring weights from disk. A first convolution
whose input channels differ from the weights' (RGB weights, 6 bands) is adapted, as timm's
`adapt_input_conv` does; what was loaded, adapted and kept fresh is recorded for the setup report."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlflow_core.errors import UserInputError, did_you_mean

EXTRAS = {"timm": ("timm", "timm"), "smp": ("segmentation_models_pytorch", "segmentation")}


def build_library_model(cfg: Any, num_classes: int, in_channels: int, record: dict[str, Any] | None) -> nn.Module:
    library, _, builder = cfg.name.partition(":")
    if library in EXTRAS and importlib.util.find_spec(EXTRAS[library][0]) is None:
        module, extra = EXTRAS[library]
        raise UserInputError(f"model.name {cfg.name!r} needs {module}, which is not installed.",
                             hint=f"Install it with `pip install 'wf-phases[{extra}]'`.")
    build = {"torchvision": _torchvision, "timm": _timm, "smp": _smp}[library]
    return build(builder, cfg, num_classes, in_channels, record if record is not None else {})


def _unknown(name: str, choices: list[str], listing: str) -> UserInputError:
    return UserInputError(f"model.name {name!r}: no such model." + did_you_mean(name.partition(":")[2], choices),
                          hint=f"{listing} lists them.")


def _torchvision(builder: str, cfg: Any, num_classes: int, in_channels: int, record: dict[str, Any]) -> nn.Module:
    from torchvision import models

    known = models.list_models(module=models)  # the classifiers (not detection, segmentation, video)
    if builder not in known:
        raise _unknown(cfg.name, known, "`python -c \"import torchvision; print(torchvision.models.list_models("
                       "module=torchvision.models))\"`")
    model = models.get_model(builder, weights=None, num_classes=num_classes, **cfg.kwargs)
    replace_first_conv(model, in_channels)
    if cfg.pretrained:
        weights = models.get_model_weights(builder).DEFAULT
        file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not file.is_file():
            raise _not_cached(cfg.name, file, file.parent)
        state = torch.load(file, map_location="cpu", weights_only=True)
        record["pretrained"] = {"source": f"torchvision's {weights} ({file.name}, torch hub's cache)",
                                **apply_state(model, state, f"torchvision {builder}")}
    return model


def _timm(builder: str, cfg: Any, num_classes: int, in_channels: int, record: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(builder):
        raise _unknown(cfg.name, timm.list_models(), "`python -c \"import timm; print(timm.list_models())\"`")
    options: dict[str, Any] = {}
    if cfg.pretrained:
        from huggingface_hub import constants, try_to_load_from_cache

        pretrained = timm.models.get_pretrained_cfg(builder)
        repo = getattr(pretrained, "hf_hub_id", None)
        found = None
        for name in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, name) if repo else None
            found = found or (hit if isinstance(hit, str) else None)
        if found is None:
            folder = Path(constants.HF_HUB_CACHE) / f"models--{(repo or builder).replace('/', '--')}"
            raise _not_cached(cfg.name, folder / "snapshots" / "…" / "model.safetensors", folder)
        options["pretrained_cfg_overlay"] = {"file": found}  # this file, no hub call
        record["pretrained"] = {"source": f"timm's {repo} (the Hugging Face cache)",
                                "adapted": ["the first convolution, by timm"] if in_channels != 3 else []}
    try:
        return timm.create_model(builder, pretrained=cfg.pretrained, num_classes=num_classes, in_chans=in_channels,
                                 **options, **cfg.kwargs)
    except TypeError as exc:
        raise UserInputError(f"model.kwargs for {cfg.name!r}: {exc}") from None


def _smp(builder: str, cfg: Any, num_classes: int, in_channels: int, record: dict[str, Any]) -> nn.Module:
    import segmentation_models_pytorch as smp

    archs = sorted(a.__name__ for a in smp.MODEL_ARCHITECTURES_MAPPING.values())
    if builder not in archs:
        raise _unknown(cfg.name, archs, "`python -c \"import segmentation_models_pytorch as s; "
                       "print(list(s.MODEL_ARCHITECTURES_MAPPING))\"`")
    kwargs = dict(cfg.kwargs)
    encoder = kwargs.pop("encoder_name", "resnet34")
    if encoder not in smp.encoders.encoders:
        raise UserInputError(f"model.kwargs.encoder_name {encoder!r}: segmentation_models_pytorch has no such "
                             "encoder." + did_you_mean(encoder, list(smp.encoders.encoders)))
    weights = None
    if cfg.pretrained:
        from huggingface_hub import constants, try_to_load_from_cache

        settings = smp.encoders.encoders[encoder]["pretrained_settings"].get("imagenet")
        if settings is None:
            raise UserInputError(f"model.pretrained: encoder {encoder!r} has no ImageNet weights in "
                                 "segmentation_models_pytorch.")
        hit = try_to_load_from_cache(settings["repo_id"], "model.safetensors", revision=settings.get("revision"))
        if not isinstance(hit, str):
            folder = Path(constants.HF_HUB_CACHE) / f"models--{settings['repo_id'].replace('/', '--')}"
            raise _not_cached(cfg.name, folder / "snapshots" / "…" / "model.safetensors", folder)
        weights = "imagenet"
        record["pretrained"] = {"source": f"segmentation_models_pytorch's {encoder} encoder, ImageNet "
                                          f"({settings['repo_id']}, the Hugging Face cache)",
                                "adapted": ["the encoder's first convolution, by smp"] if in_channels != 3 else []}
    try:
        return smp.create_model(builder, encoder_name=encoder, encoder_weights=weights, in_channels=in_channels,
                                classes=num_classes, **kwargs)
    except TypeError as exc:
        raise UserInputError(f"model.kwargs for {cfg.name!r}: {exc}") from None


def _not_cached(name: str, file: Path, folder: Path) -> UserInputError:
    return UserInputError(f"model.pretrained for {name!r}: the weights file {file} is not on this machine, and wf "
                          "downloads nothing at run time.",
                          hint=f"Put the library's file in {folder} (download it once where there is a network, e.g. "
                               "by building the model with its weights there), or set model.pretrained: false and "
                               "model.init_from: a state dict in the project.")


def replace_first_conv(model: nn.Module, in_channels: int) -> str | None:
    """A fresh first convolution for `in_channels` where the model's takes another count; its name."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return None
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2],
                    nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                              module.dilation, module.groups, module.bias is not None))
            return name
    return None


def adapt_input_conv(in_channels: int, weight: torch.Tensor) -> torch.Tensor:
    """A first convolution's weights (out, in, kh, kw) for another input channel count, as timm's
    adapt_input_conv makes them: summed over the input channels for one, else repeated over them and
    scaled by in/new, so that an input whose channels all look alike gives the same activations."""
    dtype, weight = weight.dtype, weight.float()
    out, old, kh, kw = weight.shape
    if in_channels == 1:
        adapted = (weight.reshape(out, old // 3, 3, kh, kw).sum(dim=2) if old > 3 and old % 3 == 0
                   else weight.sum(dim=1, keepdim=True))
    else:
        repeat = math.ceil(in_channels / old)
        adapted = weight.repeat(1, repeat, 1, 1)[:, :in_channels] * (old / in_channels)
    return adapted.to(dtype)


def apply_state(model: nn.Module, payload: dict[str, torch.Tensor], shown: str) -> dict[str, Any]:
    """Load the tensors of `payload` that fit `model`; the model's first convolution is adapted where
    only its input channels differ; the rest keeps its fresh initialisation. What happened, by name."""
    own = model.state_dict()
    first = next((k for k, v in own.items() if v.ndim == 4), None)
    fitting = {k: v for k, v in payload.items() if k in own and own[k].shape == v.shape}
    adapted = []
    if first and first in payload and first not in fitting:
        source, target = payload[first], own[first]
        if source.ndim == 4 and source.shape[0] == target.shape[0] and source.shape[2:] == target.shape[2:]:
            fitting[first] = adapt_input_conv(target.shape[1], source)
            adapted.append(f"{first}: {source.shape[1]} → {target.shape[1]} input channels")
    if not fitting:
        raise UserInputError(f"no tensor of {shown} fits model '{type(model).__name__}' (its names start like "
                             f"{sorted(payload)[:3]}; the model's like {sorted(own)[:3]}).")
    model.load_state_dict(fitting, strict=False)
    return {"loaded": len(fitting), "of": len(own), "adapted": adapted, "kept_fresh": sorted(set(own) - set(fitting)),
            "shape_mismatch": sorted(k for k, v in payload.items() if k in own and own[k].shape != v.shape
                                     and not (adapted and k == first)),
            "unused": sorted(set(payload) - set(own))}
