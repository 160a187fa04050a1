"""The training loop, top to bottom. Everything a run does beyond the optimizer step (the curriculum,
mixing, EMA, monitoring, checkpoints, resume points, early stopping, TensorBoard) is a callback
(training/callbacks/); the step itself is training/step.py, and how the run is spread over
processes is training/parallel.py."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from mlflow_core.errors import RankLostError, StorageError, WfError
from mlflow_core.training.device_batches import DeviceFeed
from mlflow_core.training.fit_state import FitState
from mlflow_core.training.parallel import is_collective_failure
from mlflow_core.training.records import finite_or_str
from mlflow_core.training.seeding import set_rng_state
from mlflow_core.workflow.noise import chance_level

if TYPE_CHECKING:
    from mlflow_core.training.callbacks.base import Trainer


def fit(t: Trainer, max_steps: int | None = None) -> FitState:
    """Train `t`'s run to its end: all epochs, a stop (early stopping, a pruner, a signal, a
    non-finite loss) or `max_steps` optimizer steps. Returns the run's final state."""
    try:
        return _fit(t, max_steps)
    except BaseException as exc:
        # under DDP the other ranks wait in a collective this rank will not join: leaving the process
        # group ends their wait at once, not after its timeout
        t.strategy.on_failure()
        if t.strategy.distributed and not isinstance(exc, WfError) and is_collective_failure(exc):
            raise rank_lost("before training started") from None
        raise


def _fit(t: Trainer, max_steps: int | None) -> FitState:
    s = t.start(max_steps)  # build the run; continue from a resume point
    try:
        t.callbacks.on_fit_start(t, s)
        s.started, s.started_at_step = time.perf_counter(), s.global_step
        t.log.info("run %s: %s on %s, %d train / %d val samples, %d steps per epoch%s", t.run_id, t.cfg.model.label,
                   t.device, len(t.data.train), len(t.data.val), s.steps_per_epoch,
                   f", resumed at epoch {s.first_epoch} step {s.global_step}" if s.resume else "")
        for epoch in range(s.first_epoch, s.epochs + 1):
            s.epoch = epoch
            batches = start_epoch(t, s)
            for step_in_epoch in range(s.first_step, s.steps_per_epoch + 1):
                s.step_in_epoch = step_in_epoch
                step = t.step.backward(batches, s.tally, lambda x, y: t.training_batch(s, x, y))
                t.callbacks.on_before_optimizer_step(t, s, step)  # a non-finite loss stops before the step
                if s.stopping:
                    break
                t.step.apply()
                t.schedule.after_step()
                s.tally.seen += step.samples
                s.global_step += 1
                t.callbacks.on_step_end(t, s, step)  # EMA, deadline, the check window, resume points
                if s.stopping or s.max_steps_reached:
                    break
            if s.stopping_now or (s.max_steps_reached and not t.keeps_resume):
                break
            # Run the iterator to its end, as `for batch in loader` does: when the data divide into
            # whole batches, the sampler draws its (empty) remainder permutation only then, and
            # skipping that draw would shift every later epoch's order from a plain loop's.
            if s.last_step_of_epoch and not t.limit_train_steps:
                batches.drain()
            record = end_epoch(t, s)
            t.callbacks.on_validation_end(t, s, record)  # early stopping, the pruner, checkpoints
            t.schedule.after_epoch(s.validated_value)
            t.callbacks.on_epoch_end(t, s, record)  # progress, TensorBoard, metrics.json, the resume point
            if s.stopping or s.max_steps_reached:
                break
        t.monitor.gather_gpu_summaries(t, s)
    except KeyboardInterrupt:
        s.stop("interrupted", "interrupted by the user")
        raise
    except StorageError as exc:  # disk full, read-only, no permission: resumable once fixed
        s.stop("interrupted", exc.message)
        t.log.error("stopped: %s", exc.message)
        raise
    except Exception as exc:
        if t.strategy.distributed and is_collective_failure(exc):  # resumable, like a signal
            s.stop("interrupted", f"another rank left the run at step {s.global_step}")
            t.log.error("stopped: %s (%s)", s.stop_reason, str(exc).splitlines()[0][:200])
            raise rank_lost(f"at step {s.global_step}") from None
        s.stop("crashed", f"{type(exc).__name__}: {exc}")
        t.log.exception("training crashed")
        raise
    finally:
        t.callbacks.on_fit_end(t, s)  # files closed, signal handlers back, metrics.json written
    return s


def start_epoch(t: Trainer, s: FitState) -> DeviceFeed:
    """The epoch's stage and mixing (callbacks), its counters, and its batches: a fresh shuffle, or
    for the epoch a resume point is in, the interrupted epoch's shuffle with its trained batches
    drawn and dropped."""
    t.callbacks.on_epoch_start(t, s)
    t.model.train()
    s.epoch_started = time.perf_counter()
    s.tally, s.first_step, s.validated_value = t.new_tally(), 1, None
    if t.epoch_sampler is not None:
        t.epoch_sampler.set_epoch(s.epoch)  # each epoch its own permutation, the same on every rank
    resume = s.resume
    if resume is None or s.epoch != resume["epoch"]:
        s.tally.generator_state = t.train_loader.generator.get_state()
        return DeviceFeed(iter(t.train_loader), t.device, t.prefetch)
    t.train_loader.generator.set_state(resume["epoch_generator_state"])
    batches = DeviceFeed(iter(t.train_loader), t.device, t.prefetch)
    batches.skip(resume["step_in_epoch"] * t.step.accumulate)
    s.first_step = resume["step_in_epoch"] + 1
    s.tally.load_state_dict(resume)
    s.tally.generator_state = resume["epoch_generator_state"]
    set_rng_state(resume["rng"])  # last: nothing above may draw from the global generators
    return batches


def end_epoch(t: Trainer, s: FitState) -> dict[str, Any]:
    """The epoch's record: training figures over all ranks, and on validation epochs the validation
    figures (callbacks may add theirs, e.g. the EMA's). Appended to the run's metrics."""
    elapsed = time.perf_counter() - s.epoch_started
    wait = s.tally.data_wait / elapsed if elapsed > 0 else 0.0
    correct, seen = t.strategy.reduce_epoch(s.tally.correct, s.tally.seen, t.device)
    record: dict[str, Any] = {
        "epoch": s.epoch,
        "train_loss": finite_or_str(s.tally.loss_sum / max(s.tally.seen, 1)),
        "train_accuracy": round((correct / max(seen, 1)).item(), 6),
        "lr": t.optimizer.param_groups[0]["lr"],
        "duration_s": round(elapsed, 3),
        "samples_per_s": round(seen / elapsed, 1) if elapsed > 0 else None,
        "data_wait_fraction": round(wait, 4) if elapsed > 0 else None,
    }
    if t.strategy.world_size > 1:
        record["data_wait_fraction_by_rank"] = [round(w, 4) for w in t.strategy.gather(wait)]
    if s.epoch % t.cfg.validation.validate_every_n_epochs == 0 or s.epoch == s.epochs:
        judged = t.callbacks.on_validation(t, s, record, t.validate())
        record.update(judged)
        value = judged[t.cfg.validation.metric]
        if s.metrics.get("chance") is None:  # what a model that learned nothing would score (once)
            s.metrics["chance"] = chance_level(t.val_support, "pixels" if t.cfg.task == "segmentation" else "samples")
        s.validated_value = value if isinstance(value, float) else math.nan  # a non-finite loss is a string
    t.callbacks.on_epoch_record(t, s, record)
    s.metrics["epochs"].append(record)
    return record


def rank_lost(when: str) -> RankLostError:
    return RankLostError(f"another rank left the run {when} (it was killed, crashed, or stopped on an error it "
                         "reports itself); this rank stopped too. The run continues from its last resume checkpoint.")
