"""The one shared trainer. Every phase that trains calls `Trainer.fit`.

Monitoring never forces a host–device sync on every step: on CUDA, per-step losses and gradient
norms stay on the device and are read back once per window of `monitoring.check_every_n_steps`
steps; the window's first non-finite value still gives the exact step, and a device-side snapshot
taken at the window's start plus the window's batches are kept as the last good state to replay
from. On the CPU a read-back costs nothing, so the check runs before every optimizer step and the
model itself is the last good state.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlflow_core.atomic import atomic_write_json, atomic_write_text, storage_error
from mlflow_core.config.schema import TrainingSection, WorkflowConfig
from mlflow_core.distributed import World, abandon_process_group, is_collective_failure
from mlflow_core.errors import RankLostError, StorageError, WfError
from mlflow_core.monitoring.anomalies import (
    EarlyStopping,
    GradExplosionDetector,
    StallDetector,
    first_nonfinite,
)
from mlflow_core.monitoring.nvml import GpuSampler
from mlflow_core.training.augment import BatchMixer, hard_labels, with_augmentation
from mlflow_core.training.checkpoint import load_checkpoint, save_checkpoint
from mlflow_core.training.curriculum import (
    apply_freeze,
    plan_stages,
    rescale_learning_rate,
    stage_of,
    stage_samples,
    stage_train_data,
)
from mlflow_core.training.data import (
    DataBundle,
    DistributedWeightedSampler,
    balanced_sample_weights,
    build_data,
    make_loader,
)
from mlflow_core.training.losses import build_loss
from mlflow_core.training.models import build_model, count_parameters, freeze_parameters, load_initial_weights
from mlflow_core.training.precision import plan_precision
from mlflow_core.training.seeding import SEEDED, make_generator, rng_state, seed_everything, set_rng_state
from mlflow_core.training.snapshot import DeviceSnapshot
from mlflow_core.training.tracking import TensorBoardTracker, require_tensorboard, run_hparams
from mlflow_core.workflow.evidence import file_sha256

METRICS_SCHEMA_VERSION = 1
# the signals that stop a run with a resume checkpoint (SIGUSR1: SLURM's warning before preemption;
# SIGHUP: the terminal or SSH session went away)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
logging.getLogger("wf").addHandler(logging.NullHandler())


@dataclass
class Progress:
    """What a progress display needs, sent once per check window (values already on the host)."""
    stage: str  # "train" or "val"
    epoch: int
    epochs: int
    step_in_epoch: int
    steps_per_epoch: int
    global_step: int
    loss: float | None = None
    metric: float | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None
    gpu: dict[str, float] | None = None


@dataclass
class TrainResult:
    status: str  # completed, early_stopped, pruned, failed_nan, interrupted, crashed
    metrics: dict[str, Any]
    model: nn.Module
    run_dir: Path | None
    anomalies: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from mlflow_core.errors import UserInputError
        raise UserInputError(f"training.device is {name!r} but torch sees no CUDA device "
                             "(set training.device: auto or cpu)")
    return torch.device(name)


def finite_or_str(value: float) -> float | str:
    """JSON has no NaN/Inf: keep them readable as strings."""
    return value if math.isfinite(value) else str(value)


def joined(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's micro-batches as one batch (for the NaN replay, which replays steps)."""
    if len(batches) == 1:
        return batches[0]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def total_grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


ACTIVATIONS = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
               "Sigmoid", "Tanh", "Hardtanh", "Hardsigmoid", "Hardswish", "Softplus", "Softsign", "LogSigmoid")
NORMALIZATIONS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "InstanceNorm1d",
                  "InstanceNorm2d", "InstanceNorm3d", "LocalResponseNorm", "RMSNorm")


def architecture_summary(model: nn.Module) -> dict[str, Any]:
    """Activation and normalisation modules by type, and the weight layers' count: what the
    gradient diagnostics reason about (functional activations in a custom forward are not seen)."""
    activations: dict[str, int] = {}
    norms: dict[str, int] = {}
    for module in model.modules():
        kind = type(module).__name__
        for table, kinds in ((activations, ACTIVATIONS), (norms, NORMALIZATIONS)):
            if kind in kinds:
                table[kind] = table.get(kind, 0) + 1
    weight_layers = sum(1 for p in model.parameters() if p.ndim >= 2)
    return {"activations": activations, "normalization": norms, "weight_layers": weight_layers}


def effective_learning_rate(t: TrainingSection, world_size: int = 1) -> float:
    """learning_rate, or with `lr_scaling: linear` learning_rate × effective batch / 256."""
    if t.lr_scaling == "linear":
        return t.learning_rate * t.batch_size * t.accumulate_steps * world_size / 256
    return t.learning_rate


def build_optimizer(t: TrainingSection, params: list[torch.Tensor], world_size: int = 1) -> torch.optim.Optimizer:
    lr = effective_learning_rate(t, world_size)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=t.weight_decay)


PER_STEP_SCHEDULERS = ("warmup_cosine", "onecycle")
TIME_LIMIT = "time_limit"  # Trainer.signal_received when the deadline, not a signal, stopped the run


class Trainer:
    def __init__(self, cfg: WorkflowConfig, project_root: Path, run_dir: Path | None = None, *,
                 run_id: str = "", phase: str = "baseline", on_progress: Callable[[Progress], None] | None = None,
                 gpu_sampler: GpuSampler | None = None, data: DataBundle | None = None,
                 windowed: bool | None = None, on_epoch: Callable[[int, float], bool] | None = None,
                 resume_from: Path | None = None, stop_on_signals: bool = False,
                 limit_train_steps: int | None = None, limit_val_batches: int | None = None,
                 world: World | None = None, deadline: float | None = None, short_check: bool = False):
        # under DDP every rank trains and agrees on when to stop; only rank 0 writes files
        self.world = world
        self.cfg, self.project_root = cfg, project_root
        self.run_dir = run_dir if world is None or world.is_writer else None
        self.keeps_resume = run_dir is not None  # the same on every rank: resume points are collective
        self.run_id, self.phase = run_id, phase
        self.on_progress = on_progress or (lambda _p: None)
        self.gpu_sampler = gpu_sampler
        self.data = data
        self.windowed = windowed  # None: windowed read-back on accelerators, per-step check on the CPU
        self.on_epoch = on_epoch  # (epoch, validation metric) -> stop now? e.g. an Optuna pruner
        self.resume_from = resume_from  # checkpoints/resume.pt of an interrupted run: continue it exactly
        self.stop_on_signals = stop_on_signals  # SIGTERM/SIGINT: finish the step, save resume.pt, stop
        self.signal_received: int | str | None = None  # a signal number, or TIME_LIMIT
        self.deadline = deadline  # time.monotonic(): past it, stop as on a signal (under DDP rank 0 decides)
        self.tracker: TensorBoardTracker | None = None  # monitoring.tensorboard, opened by fit on the writing rank
        # `--smoke`: this many optimizer steps per epoch and validation batches, to check that a config runs
        self.limit_train_steps, self.limit_val_batches = limit_train_steps, limit_val_batches
        # `--smoke` and setup's checks: fp32 where the CPU would only emulate the configured fp16/bf16
        self.short_check = short_check
        self.log = logging.getLogger(f"wf.trainer.{run_id or 'anon'}")

    # --- set-up ------------------------------------------------------------------------------------

    def _build(self) -> None:
        cfg, t = self.cfg, self.cfg.training
        seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)
        self.device = resolve_device(t.device)
        if self.world is not None and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
        # explicit both ways: torch's own defaults differ between matmuls and convolutions
        torch.backends.cuda.matmul.allow_tf32 = t.tf32
        torch.backends.cudnn.allow_tf32 = t.tf32
        if cfg.monitoring.tensorboard:  # every rank, and setup's short runs, say so before training
            require_tensorboard()
        self.data = with_augmentation(self.data or build_data(cfg, self.project_root), cfg.augmentation)
        seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)  # data building may draw
        self.model = build_model(cfg.model, self.data.num_classes, self.data.input_shape, self.project_root)
        self.recipe: dict[str, Any] = {}
        if cfg.model.init_from:
            self.recipe["init_from"] = load_initial_weights(
                self.model, self._project_file(cfg.model.init_from), cfg.model.init_from)
        if cfg.model.freeze:
            self.recipe["frozen"] = freeze_parameters(self.model, cfg.model.freeze)
        self.channels_last = t.channels_last and len(self.data.input_shape) == 3
        if self.channels_last:
            self.model.to(self.device, memory_format=torch.channels_last)
        else:
            self.model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(t, self.params)
        self.criterion = build_loss(cfg, self.data.num_classes).to(self.device)
        self.ema = None
        if t.ema.enabled:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema.decay), use_buffers=True)
        self.ddp = None
        self._wrap()
        if self.world is not None:
            # randomness of training (dropout, augmentation, mixing) differs by rank; the model's
            # initialisation above was the same everywhere, and DDP starts from rank 0's anyway
            seed_everything(cfg.reproducibility.seed + self.world.rank, cfg.reproducibility.deterministic)
        self.mixer = (BatchMixer(cfg.augmentation, self.data.num_classes, t.epochs, self.data.input_shape)
                      if cfg.augmentation.mixing else None)
        self.precision = plan_precision(cfg.training.precision, self.device.type, short_check=self.short_check)
        if self.precision.note:
            self.log.warning("%s", self.precision.note)
        self.amp_dtype = self.precision.amp_dtype
        # with a GradScaler an overflowing gradient is expected now and then: the scaler skips that
        # step and lowers its scale, so only a non-finite loss is a failure
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.precision.mode == "fp16" and cfg.training.grad_scaler else None)
        seed = cfg.reproducibility.seed
        val_data = self.data.val
        if self.world is not None:
            from torch.utils.data import Subset
            # validation without the sampler's padding, so that the reduced figures are exact
            val_data = Subset(self.data.val, range(self.world.rank, len(self.data.val), self.world.world_size))
        # the curriculum's stages (one stage of the plain settings without one), and each stage's steps
        self.stages, self.curriculum, self.stage = plan_stages(cfg), bool(cfg.curriculum.stages), None
        # with a curriculum, each stage's first epoch builds the training loader (_enter_stage)
        self.train_loader, self.train_sampler = ((None, None) if self.curriculum
                                                 else self._train_loader(self.data.train, t.batch_size))
        self.val_loader = make_loader(val_data, cfg, train=False, device=self.device, seed=seed)
        self.accumulate = t.accumulate_steps
        self.lr_scale_applied = 1.0
        self._always_frozen = {n for n, p in self.model.named_parameters() if not p.requires_grad}
        self.stage_steps = [self._steps_for(stage_samples(len(self.data.train), s), s.batch_size) for s in self.stages]
        self.steps_per_epoch = self.stage_steps[0]
        self.total_steps = sum(n * (s.last_epoch - s.first_epoch + 1) for n, s in zip(self.stage_steps, self.stages))
        self.scheduler = self._scheduler()
        self.per_step_scheduler = t.scheduler.name in PER_STEP_SCHEDULERS
        self.recipe.update(learning_rate=effective_learning_rate(t), accumulate_steps=self.accumulate,
                           effective_batch=t.batch_size * self.accumulate, scheduler=t.scheduler.name,
                           label_smoothing=t.label_smoothing, ema=t.ema.model_dump() if t.ema.enabled else None,
                           mixing=cfg.augmentation.model_dump(include={"mixup_alpha", "cutmix_alpha",
                                                                       "mix_probability", "mix_off_last_fraction"})
                           if self.mixer else None,
                           mixing_last_epoch=self.mixer.last_epoch if self.mixer else None,
                           channels_last=self.channels_last, tf32=t.tf32,
                           compile="requested" if t.compile else None)
        mon = cfg.monitoring
        self.stall = StallDetector(mon.stall_window_steps, mon.stall_min_delta)
        self.explosion = GradExplosionDetector(mon.explode_factor)
        self.early = EarlyStopping(cfg.validation.mode, cfg.early_stopping.patience,
                                   cfg.early_stopping.min_delta, cfg.early_stopping.enabled)

    def _wrap(self) -> None:
        """What training calls: the model, under DDP its DistributedDataParallel wrapper, compiled
        when asked (a compile that fails falls back to `eager_model`, see _logits)."""
        if self.world is not None:
            from torch.nn.parallel import DistributedDataParallel
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.eager_model: Any = self.ddp or self.model
        compile_model = self.cfg.training.compile and self.recipe.get("compile") != "failed, eager"
        self.forward_model: Any = torch.compile(self.eager_model) if compile_model else self.eager_model

    def _train_loader(self, dataset: Any, batch_size: int) -> tuple[Any, Any]:
        """The training loader (and, under DDP, its sampler: the same permutation, or weighted draw,
        on every rank through seed and set_epoch, each rank its share)."""
        seed = self.cfg.reproducibility.seed
        sampler, sampling = None, self.cfg.data.sampling
        rank_seed = seed + (self.world.rank if self.world is not None else 0)
        generator = make_generator(rank_seed)
        weights = (balanced_sample_weights(dataset, self.data.num_classes, sampling)
                   if sampling != "uniform" else None)
        if self.world is not None and weights is not None:
            sampler = DistributedWeightedSampler(weights, self.world.world_size, self.world.rank, seed)
        elif self.world is not None:
            from torch.utils.data import DistributedSampler
            sampler = DistributedSampler(dataset, num_replicas=self.world.world_size, rank=self.world.rank,
                                         shuffle=True, seed=seed)
        elif weights is not None:
            from torch.utils.data import WeightedRandomSampler
            # the loader's generator draws the samples too: resume restores both with one state
            sampler = WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True, generator=generator)
        loader = make_loader(dataset, self.cfg, train=True, device=self.device, seed=rank_seed, sampler=sampler,
                             batch_size=batch_size, generator=generator)
        return loader, (sampler if self.world is not None else None)

    def _steps_for(self, samples: int, batch_size: int) -> int:
        """Optimizer steps of an epoch over `samples` (this rank's share under DDP)."""
        if self.world is not None:
            samples = math.ceil(samples / self.world.world_size)  # both DDP samplers give equal shares
        batches = math.ceil(samples / batch_size)
        steps = batches // self.accumulate  # a last partial group of micro-batches is dropped
        if steps < 1:
            from mlflow_core.errors import UserInputError
            raise UserInputError(f"training.accumulate_steps {self.accumulate} is more than the {batches} batches "
                                 "of an epoch.")
        return min(steps, self.limit_train_steps) if self.limit_train_steps else steps

    def _enter_stage(self, epoch: int, metrics: dict[str, Any]) -> None:
        """At a curriculum stage's first epoch (and at a resume): its data share, image size and batch
        size, its frozen layers, its learning-rate scale."""
        stage = stage_of(self.stages, epoch)
        if self.stage is not None and stage.index == self.stage.index:
            return
        self.stage = stage
        if not self.curriculum:
            return
        data = stage_train_data(self.data.train, stage, self.cfg.reproducibility.seed, self.data.input_shape)
        self.train_loader, self.train_sampler = self._train_loader(data, stage.batch_size)
        self.steps_per_epoch = self.stage_steps[stage.index - 1]
        trainable_before = [p.requires_grad for p in self.model.parameters()]
        frozen = apply_freeze(self.model, stage, self._always_frozen)
        if self.ddp is not None and trainable_before != [p.requires_grad for p in self.model.parameters()]:
            self._wrap()  # DDP's gradient buckets follow requires_grad
        rescale_learning_rate(self.optimizer, self.scheduler, stage.lr_scale / self.lr_scale_applied)
        self.lr_scale_applied = stage.lr_scale
        if not any(s["stage"] == stage.index for s in metrics["stages"]):
            metrics["stages"].append({**stage.describe(), "steps_per_epoch": self.steps_per_epoch,
                                      "samples": len(data), "frozen_tensors": len(frozen),
                                      "learning_rate": self.optimizer.param_groups[0]["lr"]})
        self.log.info("stage %d from epoch %d: %s", stage.index, epoch, stage.describe())

    def _project_file(self, relative: str) -> Path:
        from mlflow_core.errors import UserInputError

        path = (self.project_root / relative).resolve()
        root = self.project_root.resolve()
        if path != root and root not in path.parents:
            raise UserInputError(f"model.init_from: {relative} points outside the project {root}.")
        return path

    def _scheduler(self) -> Any:
        s, epochs = self.cfg.training.scheduler, self.cfg.training.epochs
        lr_scheduler = torch.optim.lr_scheduler
        total = self.total_steps
        if s.name == "onecycle":
            return lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=s.max_lr or effective_learning_rate(self.cfg.training), total_steps=total,
                pct_start=s.pct_start, div_factor=s.div_factor, final_div_factor=s.final_div_factor,
                cycle_momentum=s.cycle_momentum, base_momentum=s.base_momentum, max_momentum=s.max_momentum)
        if s.name == "warmup_cosine":
            warmup = min(round(s.warmup_epochs * self.steps_per_epoch), total - 1)
            cosine = lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(total - warmup, 1), eta_min=s.min_lr)
            if warmup <= 0:
                return cosine
            linear = lr_scheduler.LinearLR(self.optimizer, start_factor=s.warmup_start_factor, end_factor=1.0,
                                           total_iters=warmup)
            return lr_scheduler.SequentialLR(self.optimizer, [linear, cosine], milestones=[warmup])
        if s.name == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, s.step_size, s.gamma)
        if s.name == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs, eta_min=s.min_lr)
        if s.name == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode=self.cfg.validation.mode,
                                                              factor=s.factor, patience=s.patience, min_lr=s.min_lr)
        return None

    # --- the loop ----------------------------------------------------------------------------------

    def fit(self, max_steps: int | None = None) -> TrainResult:
        """Train. `max_steps` stops early for short verification runs (no files are written when
        the trainer has no run directory)."""
        try:
            return self._fit(max_steps)
        except BaseException as exc:
            if self.world is None:
                raise
            # the other ranks wait in a collective this rank will not join (DDP's first broadcast, a
            # step's mean loss): leaving the process group ends their wait at once, not after its timeout
            abandon_process_group()
            if not isinstance(exc, WfError) and is_collective_failure(exc):
                raise self._rank_lost("before training started") from None
            raise

    def _rank_lost(self, when: str) -> RankLostError:
        return RankLostError(f"another rank left the run {when} (it was killed, crashed, or stopped on an "
                             "error it reports itself); this rank stopped too. The run continues from its "
                             "last resume checkpoint.")

    def _fit(self, max_steps: int | None) -> TrainResult:
        self._build()
        cfg, device = self.cfg, self.device
        windowed = self.windowed if self.windowed is not None else device.type != "cpu"
        window_size = cfg.monitoring.check_every_n_steps if windowed else 1
        epochs = cfg.training.epochs
        accumulate = self.accumulate
        metrics = self._new_metrics()
        self.recent: deque[tuple[int, float, float]] = deque(maxlen=50)
        self.step_losses: list[float] = []  # every step's loss, on the host (read back per window anyway)
        self.anomalies: list[dict[str, Any]] = []
        if self.precision.fell_back:  # recorded like a torch.compile that fell back to eager
            self.anomalies.append({"kind": "precision_fallback", "step": None, "epoch": None,
                                   "message": self.precision.note})
        global_step, status, stop_reason = 0, "completed", None
        self._stop_agreed = False
        start_epoch, resume = 1, None
        if self.resume_from is not None:
            resume = self._restore(metrics)
            metrics = resume["metrics"]
            self._tidy_kept_best(metrics)
            start_epoch, global_step = resume["epoch"], resume["global_step"]
        steps_file = self._open_steps_log(resumed_at=global_step if resume else None)
        self.tracker = (TensorBoardTracker(self.run_dir, self.log, resumed_at=global_step if resume else None)
                        if cfg.monitoring.tensorboard and self.run_dir else None)
        sampler = self.gpu_sampler.start() if self.gpu_sampler else None
        started = time.perf_counter()
        self.log.info("run %s: %s on %s, %d train / %d val samples, %d steps per epoch%s", self.run_id,
                      cfg.model.name, device, len(self.data.train), len(self.data.val), self.steps_per_epoch,
                      f", resumed at epoch {start_epoch} step {global_step}" if resume else "")
        previous_handlers = self._install_signal_handlers()
        try:
            for epoch in range(start_epoch, epochs + 1):
                # -- train one epoch ------------------------------------------------------------------
                self._enter_stage(epoch, metrics)
                steps_per_epoch = self.steps_per_epoch
                self.model.train()
                epoch_start, data_wait = time.perf_counter(), 0.0
                correct, seen = torch.zeros((), device=device), 0
                self._epoch_loss_sum = 0.0  # on the host, from the losses each window reads back anyway
                window: list[tuple[int, torch.Tensor, torch.Tensor, int]] = []  # (step, loss, grad norm, batch)
                window_batches: list[tuple[torch.Tensor, torch.Tensor]] = []  # host copies, for replay
                snapshot = self._snapshot() if window_size > 1 else None
                window_start, window_t0 = global_step, time.perf_counter()
                first_step = 1
                if self.train_sampler is not None:
                    self.train_sampler.set_epoch(epoch)  # each epoch its own permutation, the same on every rank
                if resume is not None and epoch == resume["epoch"]:
                    # the same shuffle as the interrupted epoch: its generator state at the epoch's start,
                    # then the batches it had already trained on drawn and dropped
                    self.train_loader.generator.set_state(resume["epoch_generator_state"])
                    batches = iter(self.train_loader)
                    for _ in range(resume["step_in_epoch"] * accumulate):
                        next(batches)
                    first_step = resume["step_in_epoch"] + 1
                    correct += resume["correct"]
                    seen, data_wait = resume["seen"], resume["data_wait"]
                    self._epoch_loss_sum = resume["epoch_loss_sum"]
                    set_rng_state(resume["rng"])  # last: nothing above may draw from the global generators
                else:
                    self._epoch_generator_state = self.train_loader.generator.get_state()
                    batches = iter(self.train_loader)
                step_in_epoch = first_step - 1
                mixing = self.mixer is not None and self.mixer.active(epoch)
                if self.stage.mixing is not None:  # the curriculum stage decides
                    mixing = self.mixer is not None and self.stage.mixing
                for step_in_epoch in range(first_step, steps_per_epoch + 1):
                    self.optimizer.zero_grad(set_to_none=True)
                    step_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
                    loss, step_samples = None, 0
                    for _micro in range(accumulate):  # gradient accumulation: micro-batches, one step
                        # data: time spent waiting for the loader is the data-wait figure
                        t0 = time.perf_counter()
                        inputs_cpu, targets_cpu = next(batches)
                        data_wait += time.perf_counter() - t0
                        if mixing:
                            inputs_cpu, targets_cpu = self.mixer(inputs_cpu, targets_cpu)
                        step_batches.append((inputs_cpu, targets_cpu))
                        inputs = self._to_device(inputs_cpu)
                        targets = targets_cpu.to(device, non_blocking=True)
                        # DDP: gradients are averaged across ranks on the step's last micro-batch only
                        with (self.ddp.no_sync() if self.ddp is not None and _micro < accumulate - 1
                              and self.forward_model is self.ddp else contextlib.nullcontext()):
                            logits, micro_loss = self._forward(inputs, targets)
                            part = micro_loss if accumulate == 1 else micro_loss / accumulate
                            if self.scaler is None:
                                part.backward()
                            else:
                                self.scaler.scale(part).backward()
                        loss = micro_loss.detach() if loss is None else loss + micro_loss.detach()
                        hits = logits.detach().argmax(1) == hard_labels(targets)
                        # per sample: 0/1, or for a mask its share of right pixels (all masks have one size)
                        correct += hits.sum() if hits.ndim == 1 else hits.flatten(1).float().mean(1).sum()
                        step_samples += targets.shape[0]
                    if accumulate > 1:
                        loss = loss / accumulate
                    if self.world is not None:  # every rank sees the mean loss: the same NaN and stop decisions
                        loss = self._mean_over_ranks(loss)
                    if self.scaler is not None:
                        self.scaler.unscale_(self.optimizer)  # clip and measure true gradients
                    if cfg.training.grad_clip_norm:
                        grad_norm = nn.utils.clip_grad_norm_(self.params, cfg.training.grad_clip_norm)
                    else:
                        grad_norm = total_grad_norm(self.params)
                    if global_step == 0 or step_in_epoch == steps_per_epoch:
                        self._record_layers(epoch, global_step)  # twice an epoch at most: evidence for diagnose
                    # check before the step on the CPU: the model is then still the last good state
                    if window_size == 1:
                        loss_f, norm_f = loss.item(), grad_norm.item()
                        self.recent.append((global_step, loss_f, norm_f))
                        if not (math.isfinite(loss_f) and (math.isfinite(norm_f) or self.scaler is not None)):
                            info = self._nonfinite(epoch, step_in_epoch, global_step, loss_f, norm_f,
                                                   state=None, state_step=global_step,
                                                   batches=[joined(step_batches)])
                            metrics["nonfinite"] = info
                            if cfg.monitoring.nan_action == "stop":
                                status, stop_reason = "failed_nan", info["message"]
                                if window:  # record the finite steps of the open window before stopping
                                    self._flush(window, epoch, step_in_epoch - 1, steps_per_epoch, global_step,
                                                window_t0, started, epochs, steps_file, window_start, None, [])
                                break
                    else:
                        window_batches.append(joined(step_batches))
                    # step
                    if self.scaler is None:
                        self.optimizer.step()
                    else:
                        self.scaler.step(self.optimizer)  # skipped when the gradients overflowed
                        self.scaler.update()
                    if self.per_step_scheduler:
                        self.scheduler.step()
                    seen += step_samples
                    window.append((global_step, loss, grad_norm.detach(), step_samples))
                    global_step += 1
                    if self.ema is not None and global_step % cfg.training.ema.every_n_steps == 0:
                        self.ema.update_parameters(self.model)
                    if self.deadline is not None and self.signal_received is None and time.monotonic() >= self.deadline:
                        self.signal_received = TIME_LIMIT
                        self.log.warning("time limit reached: stopping after step %d", global_step)
                    # monitor: once per window, one read-back
                    last = step_in_epoch == steps_per_epoch or (max_steps and global_step >= max_steps)
                    # alone, a signal flushes at once; under DDP the ranks agree at the window's end
                    signalled = self.world is None and self.signal_received is not None
                    if len(window) >= cfg.monitoring.check_every_n_steps or last or signalled:
                        bad = self._flush(window, epoch, step_in_epoch, steps_per_epoch, global_step,
                                          window_t0, started, epochs, steps_file, window_start, snapshot,
                                          window_batches)
                        if self.world is not None:
                            self._stop_agreed = self._any_rank(self.signal_received is not None)
                        if bad is not None and metrics.get("nonfinite") is None:
                            metrics["nonfinite"] = bad
                            if cfg.monitoring.nan_action == "stop":
                                status, stop_reason = "failed_nan", bad["message"]
                                break
                        window, window_batches = [], []
                        window_start, window_t0 = global_step, time.perf_counter()
                        snapshot = self._snapshot() if window_size > 1 else None
                    if max_steps and global_step >= max_steps:
                        break
                    stop = self._stop_agreed if self.world is not None else self.signal_received is not None
                    every = cfg.checkpointing.resume_every_n_steps
                    if (every and self.keeps_resume and not window and global_step % every == 0
                            and step_in_epoch < steps_per_epoch and not stop):
                        self._save_resume(epoch, step_in_epoch, global_step, metrics, correct, seen, data_wait)
                    if stop and not window and self.keeps_resume:
                        metrics["resume"] = self._save_resume(epoch, step_in_epoch, global_step, metrics, correct,
                                                              seen, data_wait)
                        status = "interrupted"
                        name = ("the time limit" if self.signal_received == TIME_LIMIT
                                else signal.Signals(self.signal_received or signal.SIGTERM).name)
                        stop_reason = f"{name} after step {global_step}; resumable from checkpoints/resume.pt"
                        break
                if status in ("failed_nan", "interrupted") or (max_steps and global_step >= max_steps
                                                               and not self.keeps_resume):
                    break
                # Run the iterator to its end, as `for batch in loader` does: when the data divide into
                # whole batches, the sampler draws its (empty) remainder permutation only then, and
                # skipping that draw would shift every later epoch's order from a plain loop's.
                if step_in_epoch == steps_per_epoch and not self.limit_train_steps:
                    for _ in batches:
                        pass

                # -- validate -------------------------------------------------------------------------
                elapsed = time.perf_counter() - epoch_start
                wait = data_wait / elapsed if elapsed > 0 else 0.0
                all_correct, all_seen, waits = correct, seen, None
                if self.world is not None:  # the whole batch's figures, and each rank's data wait
                    all_correct, all_seen, waits = self._reduce_epoch(correct, seen, wait)
                record: dict[str, Any] = {
                    "epoch": epoch,
                    "train_loss": finite_or_str(self._epoch_loss_sum / max(seen, 1)),
                    "train_accuracy": round((all_correct / max(all_seen, 1)).item(), 6),
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "duration_s": round(elapsed, 3),
                    "samples_per_s": round(all_seen / elapsed, 1) if elapsed > 0 else None,
                    "data_wait_fraction": round(wait, 4) if elapsed > 0 else None,
                }
                if waits is not None:
                    record["data_wait_fraction_by_rank"] = [round(w, 4) for w in waits]
                if self.curriculum:
                    record["stage"] = self.stage.index
                validated = epoch % cfg.validation.validate_every_n_epochs == 0 or epoch == epochs
                if validated:
                    judged = self.validate()
                    if self.ema is not None:  # both views reported; the configured one is "val_*"
                        ema = self.validate(self.ema.module)
                        record.update({f"raw_{k}": v for k, v in judged.items()})
                        record.update({f"ema_{k}": v for k, v in ema.items()})
                        if cfg.training.ema.evaluate:
                            judged = ema
                    record.update(judged)
                    val_loss = judged["val_loss"] if isinstance(judged["val_loss"], float) else math.nan
                if self.mixer is not None:
                    record["mixed"] = mixing
                metrics["epochs"].append(record)

                # -- checkpoint, early stopping, schedule --------------------------------------------
                should_stop = False
                if validated:
                    value = val_loss if cfg.validation.metric == "val_loss" else judged[cfg.validation.metric]
                    improved, should_stop, reason = self.early.update(epoch, value)
                    record["improved"] = improved
                    if improved:
                        metrics["best"] = {"metric": cfg.validation.metric, "value": value, "epoch": epoch}
                        if cfg.checkpointing.save_best:
                            metrics["checkpoints"]["best"] = self._save("best_model.pt", epoch, global_step, metrics)
                    if cfg.checkpointing.keep_best > 1 and math.isfinite(value):
                        self._keep_if_among_best(epoch, global_step, value, metrics)
                    if should_stop:
                        status, stop_reason = "early_stopped", reason
                    elif self._caller_stops(epoch, value):
                        should_stop = True
                        status, stop_reason = "pruned", f"stopped after epoch {epoch} by the caller (pruned)"
                every = cfg.checkpointing.checkpoint_every_n_epochs
                if every and epoch % every == 0:
                    metrics["checkpoints"]["periodic"].append(
                        self._save(f"checkpoint_epoch_{epoch}.pt", epoch, global_step, metrics))
                if cfg.checkpointing.save_last:
                    metrics["checkpoints"]["last"] = self._save("last_model.pt", epoch, global_step, metrics)
                if self.scheduler is not None and not self.per_step_scheduler:
                    if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                        if validated:
                            self.scheduler.step(value)
                    else:
                        self.scheduler.step()
                if self.tracker is not None:
                    self.tracker.epoch(record, global_step - 1)
                self.log.info("epoch %d/%d: %s", epoch, epochs, {k: v for k, v in record.items() if k != "epoch"})
                self.on_progress(Progress("val", epoch, epochs, steps_per_epoch, steps_per_epoch, global_step,
                                          loss=record.get("val_loss") if validated else None,
                                          metric=record.get("val_accuracy")))
                metrics["steps"] = global_step
                self._write_metrics(metrics, "running", started)
                if should_stop or (max_steps and global_step >= max_steps):
                    break
                if self.keeps_resume and cfg.checkpointing.save_last and epoch < epochs:
                    # the next epoch from its first step: the loader's generator is already where it starts
                    self._save_resume(epoch + 1, 0, global_step, metrics, torch.zeros((), device=device), 0, 0.0,
                                      generator_state=self.train_loader.generator.get_state())
            if self.world is not None:  # every rank ends the loop at the same step: gather each node's GPUs
                import torch.distributed as dist
                summaries: list[Any] = [None] * self.world.world_size
                dist.all_gather_object(summaries, self.gpu_sampler.summary() if self.gpu_sampler else None)
                metrics["gpu_by_node"] = [{"rank": rank, **summary} for rank, summary in enumerate(summaries)
                                          if summary is not None and summary.get("available")]
        except KeyboardInterrupt:
            status, stop_reason = "interrupted", "interrupted by the user"
            raise
        except StorageError as exc:  # disk full, read-only, no permission: resumable once fixed
            status, stop_reason = "interrupted", exc.message
            self.log.error("stopped: %s", exc.message)
            raise
        except Exception as exc:
            if self.world is not None and is_collective_failure(exc):  # resumable, like a signal
                status, stop_reason = "interrupted", f"another rank left the run at step {global_step}"
                self.log.error("stopped: %s (%s)", stop_reason, str(exc).splitlines()[0][:200])
                raise self._rank_lost(f"at step {global_step}") from None
            status, stop_reason = "crashed", f"{type(exc).__name__}: {exc}"
            self.log.exception("training crashed")
            raise
        finally:
            self._restore_signal_handlers(previous_handlers)
            if sampler:
                sampler.stop()
            if steps_file:
                steps_file.close()
            if self.tracker is not None:
                self.tracker.close(run_hparams(cfg), self._tracked_results(metrics))
            metrics["steps"] = global_step
            metrics["stop_reason"] = stop_reason
            metrics["anomalies"] = self.anomalies
            metrics["precision"] = {**self.precision.as_record(), "grad_scaler": self.scaler is not None,
                                    "skipped_steps": self._skipped_steps,
                                    "final_scale": self.scaler.get_scale() if self.scaler is not None else None}
            metrics["gpu"] = self.gpu_sampler.summary() if self.gpu_sampler else {
                "available": False, "reason": "not sampled"}
            try:
                if status == "failed_nan" and metrics["nonfinite"] and self.run_dir:
                    metrics["nonfinite"]["dump"] = self._save_nonfinite_dump(metrics["nonfinite"])
                self._write_metrics(metrics, status, started)
            except StorageError as exc:
                if status != "interrupted":  # the first refusal is the one to report; this one is its echo
                    raise
                self.log.error("metrics.json not updated: %s", exc.message)
        return TrainResult(status, metrics, self.evaluated_model(), self.run_dir, self.anomalies)

    @staticmethod
    def _tracked_results(metrics: dict[str, Any]) -> dict[str, float]:
        """The run's results next to its hyperparameters: the best value of the validation metric and
        the last epoch's validation figures."""
        results: dict[str, float] = {}
        if metrics.get("best"):
            results[f"best_{metrics['best']['metric']}"] = metrics["best"]["value"]
        last = metrics["epochs"][-1] if metrics["epochs"] else {}
        results.update({k: v for k, v in last.items() if k.startswith("val_") and isinstance(v, float)})
        return results

    # --- recipes -------------------------------------------------------------------------------------

    def evaluated_model(self) -> nn.Module:
        """The weights validation judges and checkpoints carry: the EMA's when it is evaluated."""
        if self.ema is not None and self.cfg.training.ema.evaluate:
            return self.ema.module
        return self.model

    def _to_device(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.to(self.device, non_blocking=True)
        if self.channels_last and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's forward, compiled when asked; a compile that fails falls back to eager, once,
        with the reason recorded (the eager model's own errors still surface)."""
        if self.forward_model is self.eager_model:
            return self.eager_model(inputs)
        try:
            return self.forward_model(inputs)
        except Exception as exc:  # torch.compile raises many types (backend, codegen, unsupported ops)
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            self.log.warning("torch.compile failed, training eagerly: %s", reason)
            self.anomalies.append({"kind": "compile_fallback", "step": None, "epoch": None,
                                   "message": f"torch.compile failed; training went on eagerly ({reason})"})
            self.recipe["compile"] = "failed, eager"
            self.forward_model = self.eager_model  # under DDP still the wrapper: gradients stay averaged
            return self.eager_model(inputs)

    def _forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.amp_dtype is None:
            logits = self._logits(inputs)
            return logits, self.criterion(logits, targets)
        with torch.autocast(self.device.type, dtype=self.amp_dtype):
            logits = self._logits(inputs)
            return logits, self.criterion(logits, targets)

    # --- interruption and resumption ------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any]:
        """First SIGTERM/SIGINT/SIGUSR1: finish the current step, save resume.pt, stop. A second
        SIGINT raises KeyboardInterrupt at once (the default handler is back after the first).
        SIGUSR1 is SLURM's warning before preemption (`--signal=USR1@90`); the engine requeues."""
        if not self.stop_on_signals or threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum: int, _frame: Any) -> None:
            self.signal_received = signum
            self.log.warning("%s received: stopping after the current step", signal.Signals(signum).name)
            signal.signal(signal.SIGINT, signal.default_int_handler)

        previous = {}
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, on_signal)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _save_resume(self, epoch: int, step_in_epoch: int, global_step: int, metrics: dict[str, Any],
                     correct: torch.Tensor, seen: int, data_wait: float,
                     generator_state: torch.Tensor | None = None) -> dict[str, Any] | None:
        """Everything the rest of the run depends on, after step `global_step`. Written atomically:
        a kill at any moment leaves the previous resume.pt whole. Under DDP every rank calls this at
        the same step: each rank's own RNG and epoch counters are gathered, and rank 0 writes."""
        local = {"rng": rng_state(), "correct": correct.detach().cpu(), "seen": seen, "data_wait": data_wait,
                 "epoch_loss_sum": self._epoch_loss_sum,
                 "epoch_generator_state": self._epoch_generator_state if generator_state is None else generator_state}
        by_rank = None
        if self.world is not None:
            import torch.distributed as dist
            by_rank = [None] * self.world.world_size
            dist.all_gather_object(by_rank, local)
        if self.run_dir is None:
            return None
        path = self.run_dir / "checkpoints" / "resume.pt"
        save_checkpoint(path, {
            "kind": "resume", "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "early_stopping": self.early.state_dict(),
            "detectors": {"stall": self.stall.state_dict(), "explosion": self.explosion.state_dict()},
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step, **local,
            "world_size": self.world.world_size if self.world is not None else 1, "by_rank": by_rank,
            "lr_scale_applied": self.lr_scale_applied,
            "step_losses": list(self.step_losses),
            "recent": [list(r) for r in self.recent], "metrics": json.loads(json.dumps(metrics)),
            "config": self.cfg.model_dump(mode="json"), "run_id": self.run_id,
        })
        return {"path": str(path.relative_to(self.run_dir)), "epoch": epoch, "step": global_step,
                "sha256": file_sha256(path), "world_size": self.world.world_size if self.world is not None else 1}

    def _restore(self, fresh_metrics: dict[str, Any]) -> dict[str, Any]:
        from mlflow_core.errors import UserInputError

        state = load_checkpoint(self.resume_from, map_location=self.device)
        if state.get("kind") != "resume":
            raise UserInputError(f"{self.resume_from}: not a resume checkpoint")
        saved_world, world = state.get("world_size", 1), self.world.world_size if self.world is not None else 1
        if saved_world != world:
            raise UserInputError(f"{self.resume_from}: was written by {saved_world} process(es) and this run has "
                                 f"{world}; an exact resume needs the same number.",
                                 hint=f"Resume with `--nproc-per-node {saved_world}`" if saved_world > 1
                                 else "Resume without --nproc-per-node.")
        if state.get("by_rank"):  # this rank's own RNG and epoch counters
            state.update(state["by_rank"][self.world.rank])
        if state["config"] != self.cfg.model_dump(mode="json"):
            raise UserInputError(f"{self.resume_from}: was written with a different config; an exact resume needs "
                                 "the config the run started with.", hint="Restore training_config.yaml, or start "
                                 "a new run without --resume.")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserInputError(f"{self.resume_from}: does not fit this model: {str(exc).splitlines()[0]}") from None
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.early.load_state_dict(state["early_stopping"])
        self.stall.load_state_dict(state["detectors"]["stall"])
        self.explosion.load_state_dict(state["detectors"]["explosion"])
        self.step_losses = list(state["step_losses"])
        self.recent.extend(tuple(r) for r in state["recent"])
        metrics = state["metrics"]
        metrics.pop("resume", None)
        self.anomalies = metrics.get("anomalies") or []
        self._layer_records = metrics["layers"]["records"]
        self._epoch_generator_state = state["epoch_generator_state"]
        self.lr_scale_applied = state.get("lr_scale_applied", 1.0)  # the optimizer state above carries it
        state["metrics"] = {**fresh_metrics, **metrics, "status": "running", "recipe": self.recipe}
        return state

    def evaluate(self, model: nn.Module | None = None) -> tuple[float, float]:
        """Validation loss and accuracy of `model` (default: the trained model)."""
        figures = self.validate(model)
        loss = figures["val_loss"]
        return (loss if isinstance(loss, float) else math.nan), figures["val_accuracy"]

    def validate(self, model: nn.Module | None = None) -> dict[str, Any]:
        """The validation figures of `model`: cross-entropy, accuracy (of pixels, for segmentation),
        macro F1, Matthews' correlation, and for segmentation the classes' mean IoU, all from one pass that
        accumulates a confusion matrix on the device."""
        loss, confusion = self._validation_pass(model or self.model)
        from mlflow_core.training.evaluation import iou_per_class, macro_f1, matthews_corrcoef

        c = confusion.double().cpu()
        figures = {"val_loss": finite_or_str(loss), "val_accuracy": round(float(c.diagonal().sum() / c.sum()), 6),
                   "val_f1": round(macro_f1(c), 6), "val_mcc": round(matthews_corrcoef(c), 6)}
        if self.cfg.task == "segmentation":
            ious = iou_per_class(c)
            figures["val_iou"] = round(sum(ious) / len(ious), 6) if ious else 0.0
            figures["val_iou_per_class"] = [round(v, 6) for v in iou_per_class(c, present_only=False)]
        return figures

    @torch.no_grad()
    def _validation_pass(self, model: nn.Module) -> tuple[float, torch.Tensor]:
        model.eval()
        classes = self.data.num_classes
        confusion = torch.zeros(classes * classes, device=self.device, dtype=torch.long)
        loss_sum = torch.zeros((), device=self.device)
        count = 0
        for index, (inputs, targets) in enumerate(self.val_loader):
            if self.limit_val_batches and index >= self.limit_val_batches:
                break
            inputs = self._to_device(inputs)
            targets = targets.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                # under DDP the plain module: ranks may hold different numbers of validation batches,
                # and DDP's forward would wait for the others
                direct = model is not self.model or self.world is not None
                logits = model(inputs) if direct else self._logits(inputs)
            loss_sum += nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            confusion += torch.bincount((targets * classes + logits.argmax(1)).flatten(), minlength=classes ** 2)
            count += targets.numel()
        totals = torch.stack([loss_sum.double(), torch.tensor(float(count), device=self.device, dtype=torch.float64)])
        if self.world is not None:
            import torch.distributed as dist
            dist.all_reduce(totals)
            dist.all_reduce(confusion)
        return (totals[0] / totals[1]).item(), confusion.reshape(classes, classes)

    # --- across ranks (DDP) -----------------------------------------------------------------------

    def _caller_stops(self, epoch: int, value: float) -> bool:
        """The caller's per-epoch verdict (an Optuna pruner, on rank 0): under DDP every rank asks,
        and all stop if rank 0's caller says so."""
        says = bool(self.on_epoch is not None and self.on_epoch(epoch, value))
        return self._any_rank(says) if self.world is not None else says

    def _mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        total = value.detach().clone().float()
        dist.all_reduce(total)  # SUM: gloo has no AVG
        return total / self.world.world_size

    def _any_rank(self, flag: bool) -> bool:
        import torch.distributed as dist
        box = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(box, op=dist.ReduceOp.MAX)
        return bool(box.item())

    def _reduce_epoch(self, correct: torch.Tensor, seen: int, wait: float) -> tuple[torch.Tensor, int, list[float]]:
        import torch.distributed as dist
        totals = torch.stack([correct.double(), torch.tensor(float(seen), device=self.device, dtype=torch.float64)])
        dist.all_reduce(totals)
        waits: list[float] = [0.0] * self.world.world_size
        dist.all_gather_object(waits, wait)
        return totals[0], int(totals[1].item()), waits

    # --- monitoring --------------------------------------------------------------------------------

    def _record_layers(self, epoch: int, step: int) -> None:
        """Per-layer gradient and weight norms of this step, for the vanishing-gradient diagnostic.
        One grouped norm per list and one read-back: a few times per run, not per step."""
        named = self._weight_params
        if not named or any(p.grad is None for _, p in named):
            return
        grads = torch.stack(torch._foreach_norm([p.grad for _, p in named])).float()
        weights = torch.stack(torch._foreach_norm([p.detach() for _, p in named])).float()
        grad_list, weight_list = torch.stack([grads, weights]).tolist()
        self._layer_records.append({"epoch": epoch, "step": step,
                                    "grad_norm": [finite_or_str(v) for v in grad_list],
                                    "weight_norm": [finite_or_str(v) for v in weight_list]})

    def _flush(self, window, epoch, step_in_epoch, steps_per_epoch, global_step, window_t0, started,
               epochs, steps_file, window_start, snapshot, window_batches) -> dict[str, Any] | None:
        steps = [w[0] for w in window]
        # three kernels and one sync per window, whatever its length
        losses, norms = torch.stack([torch.stack([w[1] for w in window]).float(),
                                     torch.stack([w[2] for w in window]).float()]).tolist()
        self._epoch_loss_sum += sum(step_loss * w[3] for step_loss, w in zip(losses, window))
        self.step_losses.extend(losses)
        lr = self.optimizer.param_groups[0]["lr"]
        if steps_file:
            try:
                writer = csv.writer(steps_file)
                for s, step_loss, n in zip(steps, losses, norms):
                    writer.writerow([s, epoch, repr(step_loss), repr(n), lr])
                steps_file.flush()
            except OSError as exc:
                raise storage_error(steps_file.name, exc) from None
        if self.tracker is not None:
            self.tracker.steps(steps, losses, norms, lr, self.gpu_sampler.latest() if self.gpu_sampler else None)
        bad_index = first_nonfinite(losses if self.scaler is not None
                                    else [step_loss + n for step_loss, n in zip(losses, norms)])
        if snapshot is not None:  # on the CPU path `recent` is filled step by step
            for s, step_loss, n in zip(steps, losses, norms):
                self.recent.append((s, step_loss, n))
        if bad_index is not None and snapshot is not None:
            # CUDA path: the window-start snapshot is the last good state; its batches replay to the bad step
            s = steps[bad_index]
            return self._nonfinite(epoch, step_in_epoch - (len(steps) - 1 - bad_index), s, losses[bad_index],
                                   norms[bad_index], state=snapshot, state_step=window_start,
                                   batches=window_batches[: bad_index + 1])
        for s, step_loss, n in zip(steps, losses, norms):
            if self.scaler is not None and not math.isfinite(n):
                self._skipped_steps += 1  # the scaler skipped this step; not a gradient explosion
                continue
            for finding in (self.stall.update(s, step_loss), self.explosion.update(s, n)):
                if finding is not None and finding.verdict.value != "nonfinite":
                    self.anomalies.append({"kind": finding.verdict.value, "step": finding.step, "epoch": epoch,
                                           "message": finding.reason})
                    self.log.warning("step %d: %s", finding.step, finding.reason)
        elapsed = time.perf_counter() - window_t0
        batch = self.cfg.training.batch_size
        rate = len(steps) * batch / elapsed if elapsed > 0 else None
        total_steps = self.total_steps
        per_step = (time.perf_counter() - started) / max(global_step, 1)
        self.on_progress(Progress("train", epoch, epochs, step_in_epoch, steps_per_epoch, global_step,
                                  loss=losses[-1], samples_per_s=rate, eta_s=per_step * (total_steps - global_step),
                                  gpu=self.gpu_sampler.latest() if self.gpu_sampler else None))
        return None

    def _nonfinite(self, epoch: int, batch_in_epoch: int, step: int, loss: float, norm: float, *,
                   state: DeviceSnapshot | None, state_step: int, batches: list) -> dict[str, Any]:
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        value = loss if what == "loss" else norm
        message = (f"non-finite {what} ({value}) at step {step} (epoch {epoch}, batch {batch_in_epoch}), "
                   f"lr {self.optimizer.param_groups[0]['lr']:.3g}")
        self.log.error(message)
        self._pending_dump = (state, state_step, batches)
        recent = [r for r in self.recent if r[0] < step][-20:]
        return {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "what": what,
                "value": str(value), "loss": finite_or_str(loss), "grad_norm": finite_or_str(norm),
                "lr": self.optimizer.param_groups[0]["lr"], "message": message,
                "recent_losses": [[s, finite_or_str(step_loss)] for s, step_loss, _ in recent],
                "recent_grad_norms": [[s, finite_or_str(n)] for s, _, n in recent]}

    def _snapshot(self) -> DeviceSnapshot:
        """Refresh the device-side last-good-state copy (see DeviceSnapshot). One per trainer."""
        if not hasattr(self, "_last_good"):
            self._last_good = DeviceSnapshot()
        return self._last_good.refresh(self.model, self.optimizer)

    def _save_nonfinite_dump(self, info: dict[str, Any]) -> str:
        snapshot, state_step, batches = self._pending_dump
        if snapshot is None:  # CPU path: the model was never stepped with the bad gradients
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        else:
            state = snapshot.materialize(self.optimizer)
        path = self.run_dir / "nonfinite" / "last_good_state.pt"
        save_checkpoint(path, {"kind": "nonfinite_dump", "model": state["model"], "optimizer": state["optimizer"],
                               "state_step": state_step, "nonfinite_step": info["step"],
                               "batches": [{"inputs": x, "targets": y} for x, y in batches],
                               "config": self.cfg.model_dump(mode="json"), "rng": rng_state()})
        return str(path.relative_to(self.run_dir))

    # --- files -------------------------------------------------------------------------------------

    def _new_metrics(self) -> dict[str, Any]:
        cfg = self.cfg
        # weight matrices and kernels in execution-ish (definition) order: first layer … classifier
        self._skipped_steps = 0
        self._weight_params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad and p.ndim >= 2]
        self._layer_records: list[dict[str, Any]] = []
        return {"schema_version": METRICS_SCHEMA_VERSION, "run_id": self.run_id, "phase": self.phase,
                "status": "running", "device": str(self.device),
                "torch": torch.__version__, "model": cfg.model.name, "parameters": count_parameters(self.model),
                "data": {"source": self.data.source, "train_size": len(self.data.train),
                         "val_size": len(self.data.val), "num_classes": self.data.num_classes,
                         "input_shape": list(self.data.input_shape),
                         "normalization": self.data.normalization, "class_names": self.data.class_names},
                "seed": cfg.reproducibility.seed, "seeded": SEEDED, "deterministic": cfg.reproducibility.deterministic,
                "metric": cfg.validation.metric, "mode": cfg.validation.mode, "target": cfg.validation.target,
                "epochs_planned": cfg.training.epochs, "batch_size": cfg.training.batch_size,
                "num_workers": cfg.data.num_workers, "epochs": [], "best": None, "nonfinite": None,
                "checkpoints": {"best": None, "last": None, "periodic": [], "top": []}, "steps": 0,
                "architecture": architecture_summary(self.model), "recipe": self.recipe, "stages": [],
                "layers": {"names": [n for n, _ in self._weight_params],
                           "numel": [p.numel() for _, p in self._weight_params], "records": self._layer_records},
                "config": cfg.model_dump(mode="json")}

    def _open_steps_log(self, resumed_at: int | None = None):
        if not self.run_dir:
            return None
        path = self.run_dir / "logs" / "steps.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        if resumed_at is not None and path.is_file():
            with path.open(newline="", encoding="utf-8") as f:  # rows past the resume point were not kept
                rows = [r for r in csv.reader(f)]
            kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < resumed_at]
            buffer = io.StringIO()
            csv.writer(buffer).writerows(kept)
            atomic_write_text(path, buffer.getvalue())  # a kill here must not lose the rows before it
        else:
            atomic_write_text(path, "step,epoch,loss,grad_norm,lr\r\n")
        try:
            return open(path, "a", newline="", encoding="utf-8")
        except OSError as exc:
            raise storage_error(path, exc) from None

    def _save(self, name: str, epoch: int, step: int, metrics: dict[str, Any]) -> dict[str, Any] | None:
        if not self.run_dir:
            return None
        path = self.run_dir / "checkpoints" / name
        save_checkpoint(path, {
            # the weights validation judged: the EMA's when it is evaluated (resume.pt keeps both)
            "model": self.evaluated_model().state_dict(), "ema_weights": self.evaluated_model() is not self.model,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": epoch, "global_step": step, "rng": rng_state(), "config": self.cfg.model_dump(mode="json"),
            "early_stopping": self.early.state_dict(),
            "detectors": {"stall": self.stall.state_dict(), "explosion": self.explosion.state_dict()},
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "metrics": {"epochs": metrics["epochs"], "best": metrics["best"]},
            "run_id": self.run_id, "num_classes": self.data.num_classes, "input_shape": list(self.data.input_shape),
            "normalization": self.data.normalization,
        })
        return {"path": str(path.relative_to(self.run_dir)), "epoch": epoch, "step": step,
                "bytes": path.stat().st_size, "sha256": file_sha256(path)}

    def _keep_if_among_best(self, epoch: int, step: int, value: float, metrics: dict[str, Any]) -> None:
        """checkpoints/top/: the `keep_best` best epochs so far, best first in metrics. A new one is
        written before the one it pushes out is deleted, so a kill between the two leaves one extra
        file, never one missing (and a resume tidies up what the list no longer names)."""
        if not self.run_dir:
            return
        top = metrics["checkpoints"].setdefault("top", [])
        keep, maximize = self.cfg.checkpointing.keep_best, self.cfg.validation.mode == "max"
        if len(top) >= keep and not (value > top[-1]["value"] if maximize else value < top[-1]["value"]):
            return
        entry = self._save(f"top/epoch_{epoch:03d}.pt", epoch, step, metrics)
        top.append({**entry, "value": value})
        top.sort(key=lambda e: (-e["value"] if maximize else e["value"], e["epoch"]))  # ties: the earlier first
        for dropped in top[keep:]:
            (self.run_dir / dropped["path"]).unlink(missing_ok=True)
        del top[keep:]

    def _tidy_kept_best(self, metrics: dict[str, Any]) -> None:
        """At a resume: files in checkpoints/top/ that the restored list does not name were written by
        the interrupted process after its resume point."""
        if not self.run_dir or not (self.run_dir / "checkpoints" / "top").is_dir():
            return
        named = {e["path"] for e in metrics["checkpoints"].get("top", [])}
        for path in (self.run_dir / "checkpoints" / "top").glob("epoch_*.pt"):
            if str(path.relative_to(self.run_dir)) not in named:
                path.unlink(missing_ok=True)

    def _write_metrics(self, metrics: dict[str, Any], status: str, started: float) -> None:
        metrics["status"] = status
        metrics["duration_s"] = round(time.perf_counter() - started, 3)
        if self.run_dir:
            atomic_write_json(self.run_dir / "logs" / "metrics.json", metrics)
