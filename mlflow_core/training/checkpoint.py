"""Checkpoints: written atomically, loaded with `weights_only=True` (a checkpoint stays data).

A checkpoint explains itself: it carries the resolved config, the epoch and step, the metrics and
every RNG state (nanoGPT's habit)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from mlflow_core import __version__
from mlflow_core.atomic import atomic_write
from mlflow_core.errors import UserInputError

CHECKPOINT_FORMAT = "wf-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    body = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "wf_version": __version__, **payload}
    atomic_write(path, lambda f: torch.save(body, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    import zipfile

    if Path(path).is_file() and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise UserInputError(f"{path}: not a readable checkpoint (truncated or corrupt?): not a torch zip archive")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserInputError(f"{path}: checkpoint not found") from None
    except pickle.UnpicklingError as exc:
        raise UserInputError(f"{path}: refused: it holds objects other than tensors and plain data "
                             f"(weights_only=True): {str(exc).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserInputError(f"{path}: not a readable checkpoint (truncated or corrupt?): "
                             f"{str(exc).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserInputError(f"{path}: not a wf checkpoint (no 'format: {CHECKPOINT_FORMAT}')")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise UserInputError(f"{path}: checkpoint version {payload.get('version')} is not supported "
                             f"(this wf reads version {CHECKPOINT_VERSION})")
    return payload


def weights_sha256(state: dict[str, Any]) -> str:
    """A digest of a model's weights, independent of device and memory format: each tensor's name,
    dtype, shape and bytes in a contiguous CPU copy, in name order. Runs record it at every epoch's
    end and `wf verify` compares re-trained weights with it, so two equal digests mean bit-equal
    weights."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
