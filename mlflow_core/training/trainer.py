"""The one shared trainer: every phase that trains builds a `Trainer` (through `make_trainer` where
a run is recorded) and calls `fit`. The Trainer holds what a run is made of (data, model,
optimizer, the step, the schedule, the strategy, the callbacks); the loop that drives them is
training/loop.py."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.errors import UserInputError
from mlflow_core.monitoring.nvml import GpuSampler
from mlflow_core.training import loop
from mlflow_core.training.augment import with_augmentation
from mlflow_core.training.callbacks import TIME_LIMIT, Callbacks, ProgressEvent, callbacks_for, restore
from mlflow_core.training.callbacks.curriculum import Curriculum
from mlflow_core.training.callbacks.ema import Ema
from mlflow_core.training.callbacks.interruption import Interruption
from mlflow_core.training.callbacks.mixing import Mixing
from mlflow_core.training.callbacks.monitor import Monitor
from mlflow_core.training.data.datasets import DataBundle
from mlflow_core.training.data.loader import gathers_batches, make_loader
from mlflow_core.training.data.sampling import balanced_sample_weights
from mlflow_core.training.data.sources import build_data
from mlflow_core.training.device_batches import BatchPrep, device_view, steps_ahead
from mlflow_core.training.evaluation import iou_per_class, macro_f1, matthews_corrcoef
from mlflow_core.training.fit_state import FitState
from mlflow_core.training.losses import build_loss
from mlflow_core.training.models import (
    build_model,
    count_parameters,
    freeze_parameters,
    load_initial_weights,
    project_file,
)
from mlflow_core.training.optim import (
    LrSchedule,
    build_optimizer,
    build_scheduler,
    effective_learning_rate,
    resolve_device,
)
from mlflow_core.training.parallel import strategy_for
from mlflow_core.training.precision import plan_precision
from mlflow_core.training.records import METRICS_SCHEMA_VERSION, architecture_summary, finite_or_str
from mlflow_core.training.seeding import SEEDED, make_generator, seed_everything
from mlflow_core.training.step import EpochTally, OptimizerStep
from mlflow_core.training.tracking import require_tensorboard, require_wandb
from mlflow_core.workflow.records import RunMetrics
from mlflow_core.world import World

__all__ = ["TIME_LIMIT", "ProgressEvent", "TrainResult", "Trainer", "recorded_trainer"]
logging.getLogger("wf").addHandler(logging.NullHandler())


@dataclass
class TrainResult:
    status: str  # completed, early_stopped, pruned, failed_nan, interrupted, crashed
    metrics: dict[str, Any]  # the run's record in its JSON form, as logs/metrics.json holds it
    model: nn.Module
    run_dir: Path | None
    anomalies: list[dict[str, Any]] = field(default_factory=list)

    @functools.cached_property
    def record(self) -> RunMetrics:
        """The run's record, typed: what code that acts on the result reads."""
        return RunMetrics.model_validate(self.metrics)


def recorded_trainer(cfg: WorkflowConfig, project_root: Path, run_dir: Path, *, run_id: str, phase: str,
                     world: World | None, resume_from: Path | None = None, deadline: float | None = None,
                     limits: dict[str, Any] | None = None, **options: Any) -> Trainer:
    """The trainer of a training run a phase records (rank 0's, or a follower's under DDP): files in
    `run_dir`, a resume point on SIGTERM/SIGINT/SIGUSR1/SIGHUP or at `deadline`, the phase's `--smoke`
    limits. `options`: on_progress, gpu_sampler, data."""
    return Trainer(cfg, project_root, run_dir, run_id=run_id, phase=phase, resume_from=resume_from,
                   stop_on_signals=True, world=world, deadline=deadline, **(limits or {}), **options)


class Trainer:
    def __init__(self, cfg: WorkflowConfig, project_root: Path, run_dir: Path | None = None, *,
                 run_id: str = "", phase: str = "baseline", on_progress: Callable[[ProgressEvent], None] | None = None,
                 gpu_sampler: GpuSampler | None = None, data: DataBundle | None = None,
                 windowed: bool | None = None, on_epoch: Callable[[int, float], bool] | None = None,
                 resume_from: Path | None = None, stop_on_signals: bool = False,
                 limit_train_steps: int | None = None, limit_val_batches: int | None = None,
                 world: World | None = None, deadline: float | None = None, short_check: bool = False,
                 mlflow: Any = None):
        # under DDP every rank trains and agrees on when to stop; only rank 0 writes files
        self.strategy = strategy_for(world)
        self.cfg, self.project_root = cfg, project_root
        self.run_dir = run_dir if self.strategy.is_writer else None
        self.keeps_resume = run_dir is not None  # the same on every rank: resume points are collective
        self.run_id, self.phase = run_id, phase
        self.mlflow = mlflow if self.strategy.is_writer else None  # monitoring/mlflow_runs.TrainingLink
        self.on_progress = on_progress or (lambda _p: None)
        self.gpu_sampler = gpu_sampler
        self.data = data
        self.windowed = windowed  # None: windowed read-back on accelerators, per-step check on the CPU
        self.on_epoch = on_epoch  # (epoch, validation metric) -> stop now? e.g. an Optuna pruner
        self.resume_from = resume_from  # checkpoints/resume.pt of an interrupted run: continue it exactly
        self.stop_on_signals = stop_on_signals  # SIGTERM/SIGINT: finish the step, save resume.pt, stop
        self.deadline = deadline  # time.monotonic(): past it, stop as on a signal (under DDP rank 0 decides)
        # `--smoke`: this many optimizer steps per epoch and validation batches, to check that a config runs
        self.limit_train_steps, self.limit_val_batches = limit_train_steps, limit_val_batches
        # `--smoke` and setup's checks: fp32 where the CPU would only emulate the configured fp16/bf16
        self.short_check = short_check
        self.anomalies: list[dict[str, Any]] = []
        self.state: FitState | None = None
        self.log = logging.getLogger(f"wf.trainer.{run_id or 'anon'}")

    # --- training ----------------------------------------------------------------------------------

    def fit(self, max_steps: int | None = None) -> TrainResult:
        """Train. `max_steps` stops early for short verification runs (no files are written when
        the trainer has no run directory)."""
        s = loop.fit(self, max_steps)
        return TrainResult(s.status, s.metrics, self.evaluated_model(), self.run_dir, self.anomalies)

    def start(self, max_steps: int | None) -> FitState:
        """Build the run and its record; with `resume_from`, continue where that run stopped."""
        self.build()
        self.state = FitState(self.new_metrics(), self.cfg.training.epochs, max_steps,
                              steps_per_epoch=self.curriculum.stage_steps[0])
        if self.precision.fell_back:  # recorded like a torch.compile that fell back to eager
            self.anomalies.append({"kind": "precision_fallback", "step": None, "epoch": None,
                                   "message": self.precision.note})
        if self.resume_from is not None:
            restore(self, self.state, self.resume_from)
        return self.state

    # --- set-up ------------------------------------------------------------------------------------

    def build(self) -> None:
        cfg, t = self.cfg, self.cfg.training
        seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)
        self.device = self.strategy.device(resolve_device(t.device))
        # explicit both ways: torch's own defaults differ between matmuls and convolutions
        torch.backends.cuda.matmul.allow_tf32 = t.tf32
        torch.backends.cudnn.allow_tf32 = t.tf32
        if cfg.monitoring.tensorboard:  # every rank, and setup's short runs, say so before training
            require_tensorboard()
        if cfg.monitoring.wandb:
            require_wandb()
        self.data = with_augmentation(self.data or build_data(cfg, self.project_root), cfg.augmentation)
        seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)  # data building may draw
        self.recipe: dict[str, Any] = {}  # build_model records pretrained weights here
        self.model = build_model(cfg.model, self.data.num_classes, self.data.input_shape, self.project_root,
                                 record=self.recipe)
        if cfg.model.init_from:
            self.recipe["init_from"] = load_initial_weights(
                self.model, project_file(self.project_root, cfg.model.init_from), cfg.model.init_from)
        if cfg.model.freeze:
            self.recipe["frozen"] = freeze_parameters(self.model, cfg.model.freeze)
        self.channels_last = t.channels_last and len(self.data.input_shape) == 3
        if self.channels_last:
            self.model.to(self.device, memory_format=torch.channels_last)
        else:
            self.model.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(t, params)
        self.criterion = build_loss(cfg, self.data.num_classes).to(self.device)
        self.precision = plan_precision(t.precision, self.device.type, short_check=self.short_check)
        if self.precision.note:
            self.log.warning("%s", self.precision.note)
        self.step = OptimizerStep(forward=self._forward, optimizer=self.optimizer, params=params, strategy=self.strategy, precision=self.precision,
                                  accumulate=t.accumulate_steps, clip_norm=t.grad_clip_norm,
                                  grad_scaler=t.grad_scaler, device=self.device)
        self._wrap()
        self.strategy.seed_rank(cfg.reproducibility.seed, cfg.reproducibility.deterministic)
        # with a curriculum, each stage's first epoch builds the training loader (callbacks/curriculum.py)
        self.train_loader, self.epoch_sampler = None, None
        if not cfg.curriculum.stages:
            self.use_train_data(self.data.train, t.batch_size)
        val = self.strategy.validation_shard(self.data.val)
        view = device_view(val, eval_size=cfg.augmentation.random_resized_crop)
        val, self.val_prep = view if view is not None else (val, BatchPrep.none())
        self.val_loader = make_loader(val, cfg, train=False, device=self.device, seed=cfg.reproducibility.seed)
        self.curriculum = Curriculum(self)
        self.schedule = LrSchedule(build_scheduler(cfg, self.optimizer, self.curriculum.total_steps,
                                                   self.curriculum.stage_steps[0]), t.scheduler.name)
        self.callbacks: Callbacks = callbacks_for(self, windowed=self.windowed if self.windowed is not None
                                                  else self.device.type != "cpu")
        self.interruption: Interruption = self.callbacks.find(Interruption)
        self.monitor: Monitor = self.callbacks.find(Monitor)
        self._ema: Ema | None = self.callbacks.find(Ema)
        mixing: Mixing | None = self.callbacks.find(Mixing)
        self.recipe.update(learning_rate=effective_learning_rate(t), accumulate_steps=t.accumulate_steps,
                           effective_batch=t.batch_size * t.accumulate_steps, scheduler=t.scheduler.name,
                           label_smoothing=t.label_smoothing, ema=t.ema.model_dump() if t.ema.enabled else None,
                           **(mixing.recipe(cfg) if mixing else {"mixing": None, "mixing_last_epoch": None}),
                           channels_last=self.channels_last, tf32=t.tf32,
                           compile="requested" if t.compile else None)

    _build = build  # what tests that inspect a freshly built model call

    def _wrap(self) -> None:
        """What training calls: the model, under DDP its DistributedDataParallel wrapper, compiled
        when asked (a compile that fails falls back to `eager_model`, see _logits)."""
        self.ddp = self.strategy.wrap(self.model, self.device)
        self.eager_model: Any = self.ddp or self.model
        compile_model = self.cfg.training.compile and self.recipe.get("compile") != "failed, eager"
        self.forward_model: Any = torch.compile(self.eager_model) if compile_model else self.eager_model
        self.step.sync_wrapper = self.ddp if self.forward_model is self.ddp else None

    def rewrap(self) -> None:
        """After requires_grad changed (a curriculum stage): DDP's gradient buckets follow it."""
        if self.ddp is not None:
            self._wrap()

    def use_train_data(self, dataset: Any, batch_size: int) -> None:
        """The training loader over `dataset` (and, under DDP, the sampler that needs set_epoch)."""
        seed = self.cfg.reproducibility.seed
        sampling = self.cfg.data.sampling
        rank_seed = self.strategy.rank_seed(seed)
        generator = make_generator(rank_seed)
        weights = balanced_sample_weights(dataset, self.data.num_classes, sampling) if sampling != "uniform" else None
        # a pack's batches travel as stored and become the model's input on the device (device_batches.py)
        view = device_view(dataset, aug=self.cfg.augmentation)
        dataset, self.train_prep = view if view is not None else (dataset, BatchPrep.none())
        sampler = self.strategy.train_sampler(dataset, weights, seed, generator)
        self.train_loader = make_loader(dataset, self.cfg, train=True, device=self.device, seed=rank_seed,
                                        sampler=sampler, batch_size=batch_size, generator=generator)
        # batches read ahead of the step must draw nothing from the training process's generators (a
        # per-sample augmentation in this process would draw out of turn, and a resume replay others)
        self.prefetch = steps_ahead(self.device) if (self.train_loader.num_workers > 0 or gathers_batches(dataset)) else 1
        self.epoch_sampler = self.strategy.epoch_sampler(sampler)

    def steps_for(self, samples: int, batch_size: int) -> int:
        """Optimizer steps of an epoch over `samples` (this rank's share under DDP)."""
        accumulate = self.cfg.training.accumulate_steps
        batches = -(-self.strategy.share(samples) // batch_size)
        steps = batches // accumulate  # a last partial group of micro-batches is dropped
        if steps < 1:
            raise UserInputError(f"training.accumulate_steps {accumulate} is more than the {batches} batches "
                                 "of an epoch.")
        return min(steps, self.limit_train_steps) if self.limit_train_steps else steps

    def new_tally(self, generator_state: torch.Tensor | None = None) -> EpochTally:
        return EpochTally(torch.zeros((), device=self.device), generator_state=generator_state)

    def stateful_parts(self) -> Iterator[tuple[str, Any]]:
        """Everything a checkpoint carries besides weights and optimizer, by state_key."""
        yield self.step.state_key, self.step
        yield self.schedule.state_key, self.schedule
        for callback in self.callbacks:
            if callback.state_key is not None:
                yield callback.state_key, callback

    def new_metrics(self) -> dict[str, Any]:
        cfg, data = self.cfg, self.data
        return {"schema_version": METRICS_SCHEMA_VERSION, "run_id": self.run_id, "phase": self.phase,
                "status": "running", "device": str(self.device),
                "torch": torch.__version__, "model": cfg.model.label, "parameters": count_parameters(self.model),
                "data": {"source": data.source, "train_size": len(data.train), "val_size": len(data.val),
                         "num_classes": data.num_classes, "input_shape": list(data.input_shape),
                         "normalization": data.normalization, "class_names": data.class_names},
                "seed": cfg.reproducibility.seed, "seeded": SEEDED, "deterministic": cfg.reproducibility.deterministic,
                "metric": cfg.validation.metric, "mode": cfg.validation.mode, "target": cfg.validation.target,
                "epochs_planned": cfg.training.epochs, "batch_size": cfg.training.batch_size,
                "num_workers": cfg.data.num_workers, "epochs": [], "best": None, "nonfinite": None,
                "checkpoints": {"best": None, "last": None, "periodic": [], "top": []}, "steps": 0,
                "architecture": architecture_summary(self.model), "recipe": self.recipe, "stages": [],
                "layers": self.monitor.layers(), "config": cfg.model_dump(mode="json")}

    # --- what the run exposes ----------------------------------------------------------------------

    @property
    def ema(self) -> Any:
        """torch's AveragedModel of the weights (`training.ema`), or None."""
        return self._ema.averaged if getattr(self, "_ema", None) is not None else None

    @property
    def signal_received(self) -> int | str | None:
        """The signal number (or TIME_LIMIT) that stopped the run, if one did."""
        return self.interruption.received if hasattr(self, "interruption") else None

    @property
    def step_losses(self) -> list[float]:
        return self.monitor.step_losses

    @property
    def steps_per_epoch(self) -> int:
        return self.state.steps_per_epoch if self.state is not None else self.curriculum.stage_steps[0]

    def evaluated_model(self) -> nn.Module:
        """The weights validation judges and checkpoints carry: the EMA's when it is evaluated."""
        if self.ema is not None and self.cfg.training.ema.evaluate:
            return self.ema.module
        return self.model

    # --- forward -----------------------------------------------------------------------------------

    def training_batch(self, s: FitState, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A loaded training batch (on the device, or on the host for a NaN replay) as the model's
        input: the pack's conversion and augmentation, the callbacks' mixing, the memory format."""
        inputs, targets = self.train_prep(inputs, targets)
        inputs, targets = self.callbacks.on_train_batch(self, s, inputs, targets)
        return self._memory_format(inputs), targets

    def _memory_format(self, inputs: torch.Tensor) -> torch.Tensor:
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
            self.step.sync_wrapper = self.ddp
            return self.eager_model(inputs)

    def _forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amp_dtype = self.precision.amp_dtype
        if amp_dtype is None:
            logits = self._logits(inputs)
            return logits, self.criterion(logits, targets)
        with torch.autocast(self.device.type, dtype=amp_dtype):
            logits = self._logits(inputs)
            return logits, self.criterion(logits, targets)

    # --- validation --------------------------------------------------------------------------------

    def evaluate(self, model: nn.Module | None = None) -> tuple[float, float]:
        """Validation loss and accuracy of `model` (default: the trained model)."""
        figures = self.validate(model)
        loss = figures["val_loss"]
        return (loss if isinstance(loss, float) else float("nan")), figures["val_accuracy"]

    def validate(self, model: nn.Module | None = None) -> dict[str, Any]:
        """The validation figures of `model`: cross-entropy, accuracy (of pixels, for segmentation),
        macro F1, Matthews' correlation, and for segmentation the classes' mean IoU, all from one pass that
        accumulates a confusion matrix on the device."""
        loss, confusion = self._validation_pass(model or self.model)

        c = confusion.double().cpu()
        self.val_support = [int(v) for v in c.sum(1).tolist()]  # the true classes' counts: chance level
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
        amp_dtype = self.precision.amp_dtype
        # under DDP the plain module: ranks may hold different numbers of validation batches, and
        # DDP's forward would wait for the others
        direct = model is not self.model or self.strategy.distributed
        for index, (inputs, targets) in enumerate(self.val_loader):
            if self.limit_val_batches and index >= self.limit_val_batches:
                break
            inputs, targets = self.val_prep(inputs.to(self.device, non_blocking=True),
                                            targets.to(self.device, non_blocking=True))
            inputs = self._memory_format(inputs)
            with torch.autocast(self.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(inputs) if direct else self._logits(inputs)
            loss_sum += nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            confusion += torch.bincount((targets * classes + logits.argmax(1)).flatten(), minlength=classes ** 2)
            count += targets.numel()
        totals = torch.stack([loss_sum.double(), torch.tensor(float(count), device=self.device, dtype=torch.float64)])
        self.strategy.sum_(totals)
        self.strategy.sum_(confusion)
        return (totals[0] / totals[1]).item(), confusion.reshape(classes, classes)
