"""One optimizer step: micro-batches forward and backward under autocast (gradient accumulation,
DDP's `no_sync` on all but the last), the loss scaler, clipping and the gradient norm, in the shape of
timm's loss scaler. The step does not decide anything: the loop's callbacks look at what it
measured (a non-finite loss, a stall) and the loop applies it or not."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mlflow_core.training.augment import hard_labels
from mlflow_core.training.device_batches import KeptBatch, Loaded, replayed
from mlflow_core.training.parallel import SingleProcess
from mlflow_core.training.precision import PrecisionPlan

Batch = tuple[torch.Tensor, torch.Tensor]


def total_grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def joined(batches: list[Batch]) -> Batch:
    """One step's micro-batches as one batch (for the NaN replay, which replays steps)."""
    if len(batches) == 1:
        return batches[0]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


Prepare = Callable[[torch.Tensor, torch.Tensor], Batch]


@dataclass
class EpochTally:
    """What an epoch accumulates step by step: right predictions (on the device: no sync per step),
    samples, seconds waiting for the loader, the loss sum (read back once per check window), and
    the loader generator's state at the epoch's start (to replay its shuffle at a resume)."""
    correct: torch.Tensor
    seen: int = 0
    data_wait: float = 0.0
    loss_sum: float = 0.0
    generator_state: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"correct": self.correct.detach().cpu(), "seen": self.seen, "data_wait": self.data_wait,
                "epoch_loss_sum": self.loss_sum, "epoch_generator_state": self.generator_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.correct += state["correct"]
        self.seen, self.data_wait, self.loss_sum = state["seen"], state["data_wait"], state["epoch_loss_sum"]


@dataclass
class StepResult:
    loss: torch.Tensor  # the step's mean loss over micro-batches (and ranks), on the device
    grad_norm: torch.Tensor  # before clipping
    samples: int
    batches: list[KeptBatch]  # its micro-batches as loaded (on the host), for the NaN replay
    prepare: Prepare  # what made them the model's input (replayed on the CPU with the same draws)

    def inputs_as_trained(self) -> Batch:
        """The step's inputs and targets as the model saw them, one batch, on the host."""
        return joined([replayed(kept, self.prepare) for kept in self.batches])


class OptimizerStep:
    """Gradients for one step (`backward`), then the update (`apply`). With a GradScaler an
    overflowing gradient is expected now and then: the scaler skips that step and lowers its scale."""

    state_key, resume_only = "grad_scaler", False

    def __init__(self, *, forward: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 optimizer: torch.optim.Optimizer, params: list[torch.Tensor], strategy: SingleProcess,
                 precision: PrecisionPlan, accumulate: int, clip_norm: float | None, grad_scaler: bool,
                 device: torch.device):
        self.forward = forward
        self.optimizer, self.params, self.strategy = optimizer, params, strategy
        self.accumulate, self.clip_norm, self.device = accumulate, clip_norm, device
        self.scaler = (torch.amp.GradScaler(device.type) if precision.mode == "fp16" and grad_scaler else None)
        self.sync_wrapper: Any = None  # the DDP wrapper when forward runs through it (not when compiled)

    def backward(self, batches: Iterator[Loaded], tally: EpochTally, prepare: Prepare) -> StepResult:
        """`batches`: the loader's, on the device (DeviceFeed); `prepare`: what makes one the model's
        input there (conversion, normalisation, augmentation, mixing; it draws from the CPU generator)."""
        self.optimizer.zero_grad(set_to_none=True)
        kept: list[KeptBatch] = []
        loss, samples = None, 0
        for micro in range(self.accumulate):
            t0 = time.perf_counter()
            loaded = next(batches)
            tally.data_wait += time.perf_counter() - t0  # the data-wait figure: time spent waiting for the loader
            draws_from = torch.get_rng_state()  # 5 KB: replays this batch's draws for a NaN dump
            inputs, targets = prepare(loaded.inputs, loaded.targets)
            kept.append(KeptBatch(loaded.host_inputs, loaded.host_targets, draws_from))
            with self.strategy.no_sync(self.sync_wrapper, micro == self.accumulate - 1):
                logits, micro_loss = self.forward(inputs, targets)
                part = micro_loss if self.accumulate == 1 else micro_loss / self.accumulate
                (part if self.scaler is None else self.scaler.scale(part)).backward()
            loss = micro_loss.detach() if loss is None else loss + micro_loss.detach()
            hits = logits.detach().argmax(1) == hard_labels(targets)
            # per sample: 0/1, or for a mask its share of right pixels (all masks have one size)
            tally.correct += hits.sum() if hits.ndim == 1 else hits.flatten(1).float().mean(1).sum()
            samples += targets.shape[0]
        if self.accumulate > 1:
            loss = loss / self.accumulate
        # under DDP every rank sees the mean loss: the same NaN and stop decisions
        loss = self.strategy.mean(loss)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip and measure true gradients
        if self.clip_norm:
            grad_norm = nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        else:
            grad_norm = total_grad_norm(self.params)
        return StepResult(loss, grad_norm, samples, kept, prepare)

    def apply(self) -> None:
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)  # skipped when the gradients overflowed
            self.scaler.update()

    @property
    def tolerates_nonfinite_gradients(self) -> bool:
        """With a scaler, an overflowing gradient norm is a skipped step, not a failure."""
        return self.scaler is not None

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
