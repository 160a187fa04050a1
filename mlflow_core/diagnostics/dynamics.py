"""Active probes of training dynamics: short experiments that confirm or rule out a cause.

- `dead_units`: the share of each ReLU's units (channels, or features) that output zero for every
  sample of a few training batches, on the run's last weights and at initialisation. Functional
  `relu` calls in a custom forward are caught too (at the aten level), named by their module.
- `single_batch_overfit`: can the model drive the loss of one batch towards zero? A model that
  cannot has a bug (loss, labels, frozen weights) or a learning rate far off.
- `shuffled_label_control`: the same short run on permuted labels; when the real labels do no
  better, the labels carry no signal the model can learn.
- `throughput`: data-loader-only time per batch against model-only time per step.
- the LR range test lives in `mlflow_core.training.lr_finder` (also used by optimization).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import Dataset

from mlflow_core.config.schema import WorkflowConfig, with_changes
from mlflow_core.diagnostics.base import PROBE_SAMPLES
from mlflow_core.errors import UserInputError
from mlflow_core.training.checkpoint import load_checkpoint
from mlflow_core.training.data.datasets import DataBundle
from mlflow_core.training.data.loader import make_loader
from mlflow_core.training.data.sampling import dataset_targets
from mlflow_core.training.models import build_model
from mlflow_core.training.optim import build_optimizer, resolve_device
from mlflow_core.training.seeding import seed_everything
from mlflow_core.training.trainer import Trainer
from mlflow_core.workflow.records import RunMetrics

MIN_UNITS = 4  # layers narrower than this are not judged


def run_model(cfg: WorkflowConfig, project_root: Path, data: DataBundle, run_dir: Path,
              metrics: RunMetrics) -> tuple[nn.Module, str]:
    """The run's model with its last saved weights (last, else best), or at initialisation."""
    seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)
    model = build_model(cfg.model, data.num_classes, data.input_shape, project_root)
    for name in ("last", "best"):
        entry = getattr(metrics.checkpoints, name)
        if entry and (run_dir / entry.path).is_file():
            path = run_dir / entry.path
            try:
                model.load_state_dict(load_checkpoint(path)["model"])
            except (RuntimeError, KeyError, TypeError) as exc:
                raise UserInputError(f"{path}: does not fit the model of this run's config "
                                     f"({cfg.model.label}): {str(exc).splitlines()[0][:300]}") from None
            return model, f"{entry.path} (epoch {entry.epoch})"
    return model, "initialisation (the run saved no checkpoint)"


def fresh_model(cfg: WorkflowConfig, project_root: Path, data: DataBundle) -> nn.Module:
    seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)
    return build_model(cfg.model, data.num_classes, data.input_shape, project_root)


def probe_batches(cfg: WorkflowConfig, data: DataBundle, samples: int = PROBE_SAMPLES) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `samples` training samples, in order, in batches of the configured size."""
    loader = make_loader(data.train, cfg, train=False, device=torch.device("cpu"), seed=cfg.reproducibility.seed)
    out, seen = [], 0
    for inputs, targets in loader:
        out.append((inputs, targets))
        seen += len(targets)
        if seen >= samples:
            break
    return out


_RELU_OPS = {torch.ops.aten.relu.default, torch.ops.aten.relu_.default}


class _ReluRecorder(TorchDispatchMode):
    """For every relu the forward pass calls: which units ever fire, keyed by call order."""

    def __init__(self, owner: list[str]) -> None:
        super().__init__()
        self.owner = owner  # the module stack, innermost last
        self.calls = 0
        self.names: list[str] = []
        self.alive: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _RELU_OPS and isinstance(out, torch.Tensor) and out.ndim >= 2:
            fired = (out > 0).transpose(0, 1).reshape(out.shape[1], -1).any(dim=1)
            if self.calls < len(self.alive):
                self.alive[self.calls] |= fired
            else:
                self.names.append(self.owner[-1] if self.owner else "model")
                self.alive.append(fired.clone())
            self.calls += 1
        return out


def dead_units(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, Any]]:
    """Per relu call site: units that never fire on these batches (train mode, as in training)."""
    names = {id(m): (n or type(m).__name__) for n, m in model.named_modules()}
    stack: list[str] = []

    def enter(module: nn.Module, _args: Any) -> None:  # a hook that returns a value replaces the input
        stack.append(names.get(id(module), type(module).__name__))

    def leave(_module: nn.Module, _args: Any, _output: Any) -> None:
        if stack:
            stack.pop()

    pre = nn.modules.module.register_module_forward_pre_hook(enter)
    post = nn.modules.module.register_module_forward_hook(leave)
    recorder = _ReluRecorder(stack)
    model.train()
    try:
        with torch.no_grad():
            for inputs, _ in batches:
                recorder.calls = 0
                with recorder:
                    model(inputs)
    finally:
        pre.remove()
        post.remove()
    layers, repeats = [], {}
    for name, alive in zip(recorder.names, recorder.alive):
        repeats[name] = repeats.get(name, 0) + 1
        label = name if repeats[name] == 1 else f"{name}#{repeats[name]}"
        units = alive.numel()
        layers.append({"layer": label, "units": units, "dead": int((~alive).sum()),
                       "dead_fraction": round(float((~alive).sum()) / units, 4)})
    return layers


def single_batch_overfit(cfg: WorkflowConfig, project_root: Path, data: DataBundle, *, steps: int = 100,
                         learning_rate: float | None = None) -> dict[str, Any]:
    """Train a fresh model on one batch; it should drive that batch's loss below a tenth of its start."""

    model = fresh_model(cfg, project_root, data)
    inputs, targets = probe_batches(cfg, data, samples=min(cfg.training.batch_size, 64))[0]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg.training, params)
    if learning_rate is not None:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
    criterion = nn.CrossEntropyLoss()
    model.train()
    losses = []
    for _ in range(steps):
        loss = criterion(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
    with torch.no_grad():
        accuracy = float((model(inputs).argmax(1) == targets).float().mean())
    first, last = losses[0], losses[-1]
    fitted = math.isfinite(last) and (last < 0.1 * first or accuracy == 1.0)
    return {"steps": len(losses), "batch": len(targets), "learning_rate": learning_rate or cfg.training.learning_rate,
            "first_loss": first, "last_loss": last if math.isfinite(last) else str(last),
            "batch_accuracy": accuracy, "fitted": fitted}


class _RelabeledDataset(Dataset):
    def __init__(self, base: Dataset, labels: list[int]):
        self.base, self.labels = base, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        inputs, _ = self.base[index]
        return inputs, self.labels[index]


def shuffled_label_control(cfg: WorkflowConfig, project_root: Path, data: DataBundle, *, steps: int,
                           learning_rate: float | None = None) -> dict[str, Any]:
    """The same short run twice, on the real labels and on a fixed permutation of them."""

    if learning_rate is not None:
        cfg = with_changes(cfg, {"training.learning_rate": learning_rate})
    labels = [int(v) for v in dataset_targets(data.train)]
    generator = torch.Generator().manual_seed(cfg.reproducibility.seed + 1)
    permuted = [labels[i] for i in torch.randperm(len(labels), generator=generator).tolist()]
    shuffled = DataBundle(_RelabeledDataset(data.train, permuted), data.val, None, data.num_classes,
                          data.input_shape, data.source + " (labels permuted)")
    out: dict[str, Any] = {"steps": steps, "learning_rate": cfg.training.learning_rate}
    for key, bundle in (("real", data), ("shuffled", shuffled)):
        trainer = Trainer(cfg, project_root, None, data=bundle)
        trainer.fit(max_steps=steps)
        val_loss, val_acc = trainer.evaluate()
        losses = trainer.step_losses
        k = max(1, len(losses) // 10)
        out[key] = {"val_loss": val_loss, "val_accuracy": val_acc,
                    "last_train_loss": sum(losses[-k:]) / k if losses else None}
    out["accuracy_margin"] = out["real"]["val_accuracy"] - out["shuffled"]["val_accuracy"]
    return out


def throughput(cfg: WorkflowConfig, project_root: Path, data: DataBundle, *, batches: int = 20) -> dict[str, Any]:
    """Seconds per batch for the data loader alone, and per optimizer step for the model alone."""

    device = resolve_device(cfg.training.device)
    loader = make_loader(data.train, cfg, train=True, device=device, seed=cfg.reproducibility.seed)
    n = min(batches, len(loader))
    iterator = iter(loader)
    first = next(iterator)  # worker start-up is not throughput
    t0 = time.perf_counter()
    for _ in range(n - 1):
        next(iterator)
    loader_s = (time.perf_counter() - t0) / max(n - 1, 1)
    model = fresh_model(cfg, project_root, data).to(device)
    optimizer = build_optimizer(cfg.training, [p for p in model.parameters() if p.requires_grad])
    inputs, targets = first[0].to(device), first[1].to(device)
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        loss = criterion(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    model_s = (time.perf_counter() - t0) / n
    return {"batches": n, "loader_s_per_batch": loader_s, "model_s_per_step": model_s,
            "loader_to_model": loader_s / model_s if model_s > 0 else None, "device": str(device)}
