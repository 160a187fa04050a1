"""Watching the loss as it happens: non-finite losses and gradient norms (stop with a dump of the last
good state and the batches that replay to the bad step), stalls, exploding gradients, `steps.csv`,
per-layer gradient norms for the diagnostics, progress events, and the GPU sampler.

Monitoring never forces a host–device sync on every step: on accelerators, per-step losses and
gradient norms stay on the device and are read back once per window of `monitoring.check_every_n_steps`
steps; the window's first non-finite value still gives the exact step, and a device-side snapshot
taken at the window's start plus the window's batches are the last good state to replay from. On the
CPU a read-back costs nothing, so the check runs before every optimizer step and the model itself is
the last good state."""

from __future__ import annotations

import csv
import io
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from mlflow_core.atomic import atomic_write_text, storage_error
from mlflow_core.monitoring.anomalies import GradExplosionDetector, StallDetector, first_nonfinite
from mlflow_core.training.callbacks.base import Callback, Window
from mlflow_core.training.checkpoint import save_checkpoint
from mlflow_core.training.records import finite_or_str
from mlflow_core.training.seeding import rng_state
from mlflow_core.training.snapshot import DeviceSnapshot


@dataclass
class ProgressEvent:
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


class Monitor(Callback):
    state_key = "monitor"
    resume_only = True

    def __init__(self, t: Any, windowed: bool):
        mon = t.cfg.monitoring
        self.window_size = mon.check_every_n_steps if windowed else 1
        self.check_every, self.nan_action = mon.check_every_n_steps, mon.nan_action
        # a resume point needs a closed window: a window also ends at every resume step, so that
        # resume_every_n_steps is honoured whatever the window's length (7 with windows of 10 would
        # otherwise first meet at step 70)
        self.resume_every = t.cfg.checkpointing.resume_every_n_steps if t.keeps_resume else 0
        self.stall = StallDetector(mon.stall_window_steps, mon.stall_min_delta)
        self.explosion = GradExplosionDetector(mon.explode_factor)
        self.recent: deque[tuple[int, float, float]] = deque(maxlen=50)
        self.step_losses: list[float] = []  # every step's loss, on the host (read back per window anyway)
        self.skipped_steps = 0  # steps the GradScaler skipped on overflowing gradients
        # weight matrices and kernels in execution-ish (definition) order: first layer … classifier
        self.weight_params = [(n, p) for n, p in t.model.named_parameters() if p.requires_grad and p.ndim >= 2]
        self.layer_records: list[dict[str, Any]] = []
        # (epoch, step, per-layer gradient and weight norms on the device): read back with the next window
        self._pending_layers: list[tuple[int, int, torch.Tensor]] = []
        self.steps_file: Any = None
        self._snapshot: DeviceSnapshot | None = None
        self._pending_dump: tuple[Any, int, list] | None = None
        self.window: list[tuple[int, torch.Tensor, torch.Tensor, int]] = []  # (step, loss, grad norm, batch)
        self.window_steps: list[Any] = []  # the window's StepResults: their batches replay to a bad step
        self.window_start, self.window_t0 = 0, time.perf_counter()

    # --- the run's start and end --------------------------------------------------------------------

    def layers(self) -> dict[str, Any]:
        return {"names": [n for n, _ in self.weight_params], "numel": [p.numel() for _, p in self.weight_params],
                "records": self.layer_records}

    def on_fit_start(self, t, s) -> None:
        self.layer_records = s.metrics["layers"]["records"]  # a resumed run's records continue
        self.steps_file = self._open_steps_log(t.run_dir, s.global_step if s.resume else None)
        if t.gpu_sampler:
            t.gpu_sampler.start()

    def on_fit_end(self, t, s) -> None:
        self._settle_layers(None)  # a run stopped with no window open still records its last layers
        if t.gpu_sampler:
            t.gpu_sampler.stop()
        if self.steps_file:
            self.steps_file.close()
        s.metrics["gpu"] = t.gpu_sampler.summary() if t.gpu_sampler else {"available": False, "reason": "not sampled"}
        if s.status == "failed_nan" and s.metrics["nonfinite"] and t.run_dir:
            s.metrics["nonfinite"]["dump"] = self._save_nonfinite_dump(t, s.metrics["nonfinite"])

    def gather_gpu_summaries(self, t, s) -> None:
        """Every rank ends the loop at the same step: each node's GPUs, one entry per rank that sampled."""
        summaries = t.strategy.gather(t.gpu_sampler.summary() if t.gpu_sampler else None)
        s.metrics["gpu_by_node"] = [{"rank": rank, **summary} for rank, summary in enumerate(summaries)
                                    if summary is not None and summary.get("available")]

    # --- steps --------------------------------------------------------------------------------------

    def on_epoch_start(self, t, s) -> None:
        self._reset_window(t, s.global_step)

    def on_before_optimizer_step(self, t, s, step) -> None:
        if s.global_step == 0 or s.last_step_of_epoch:
            self._record_layers(s.epoch, s.global_step)  # twice an epoch at most: evidence for diagnose
        if self.window_size > 1:
            self.window_steps.append(step)
            return
        # check before the step on the CPU: the model is then still the last good state
        loss, norm = step.loss.item(), step.grad_norm.item()
        self.recent.append((s.global_step, loss, norm))
        if math.isfinite(loss) and (math.isfinite(norm) or t.step.tolerates_nonfinite_gradients):
            return
        info = self._nonfinite(t, s.epoch, s.step_in_epoch, s.global_step, loss, norm, state=None,
                               state_step=s.global_step, steps=[step])
        s.metrics["nonfinite"] = info
        if self.nan_action == "stop":
            s.stop("failed_nan", info["message"])
            if self.window:  # record the finite steps of the open window before stopping
                self._flush(t, s, s.step_in_epoch - 1)

    def on_step_end(self, t, s, step) -> None:
        self.window.append((s.global_step - 1, step.loss, step.grad_norm.detach(), step.samples))
        last = s.last_step_of_epoch or s.max_steps_reached
        # alone, a signal flushes at once; under DDP the ranks agree at the window's end
        signalled = t.strategy.stops_at_any_step and t.interruption.received is not None
        at_resume_point = bool(self.resume_every) and s.global_step % self.resume_every == 0
        if not (len(self.window) >= self.check_every or last or signalled or at_resume_point):
            return
        bad = self._flush(t, s, s.step_in_epoch)
        if bad is not None and s.metrics.get("nonfinite") is None:
            s.metrics["nonfinite"] = bad
            if self.nan_action == "stop":
                s.stop("failed_nan", bad["message"])
                return
        self._reset_window(t, s.global_step)

    @property
    def window_open(self) -> bool:
        return bool(self.window)

    def _reset_window(self, t: Any, global_step: int) -> None:
        self.window, self.window_steps = [], []
        self.window_start, self.window_t0 = global_step, time.perf_counter()
        if self.window_size > 1:
            # refresh the device-side copy of the last good state (see DeviceSnapshot)
            self._snapshot = (self._snapshot or DeviceSnapshot()).refresh(t.model, t.optimizer)

    def _flush(self, t: Any, s: Any, step_in_epoch: int) -> dict[str, Any] | None:
        """One read-back for the window: steps.csv, the window's listeners, the non-finite check, the
        detectors and a progress event. Returns the non-finite record of the window's bad step."""
        window = self.window
        steps = [w[0] for w in window]
        # a few kernels and one read-back per window, whatever its length (the layers' norms with it)
        window_values = torch.stack([torch.stack([w[1] for w in window]).float(),
                                     torch.stack([w[2] for w in window]).float()]).flatten()
        values = self._settle_layers(window_values)
        losses, norms = values[:len(window)], values[len(window):]
        s.tally.loss_sum += sum(step_loss * w[3] for step_loss, w in zip(losses, window))
        self.step_losses.extend(losses)
        lr = t.optimizer.param_groups[0]["lr"]
        if self.steps_file:
            try:
                writer = csv.writer(self.steps_file)
                for step, step_loss, norm in zip(steps, losses, norms):
                    writer.writerow([step, s.epoch, repr(step_loss), repr(norm), lr])
                self.steps_file.flush()
            except OSError as exc:
                raise storage_error(self.steps_file.name, exc) from None
        t.callbacks.on_window_end(t, s, Window(s.epoch, steps, losses, norms, lr))
        tolerant = t.step.tolerates_nonfinite_gradients
        bad_index = first_nonfinite(losses if tolerant else [loss + norm for loss, norm in zip(losses, norms)])
        windowed = self.window_size > 1
        if windowed:  # on the CPU path `recent` is filled step by step
            self.recent.extend(zip(steps, losses, norms))
        if bad_index is not None and windowed:
            # the window-start snapshot is the last good state; its batches replay to the bad step
            return self._nonfinite(t, s.epoch, step_in_epoch - (len(steps) - 1 - bad_index), steps[bad_index],
                                   losses[bad_index], norms[bad_index], state=self._snapshot,
                                   state_step=self.window_start, steps=self.window_steps[: bad_index + 1])
        for step, step_loss, norm in zip(steps, losses, norms):
            if tolerant and not math.isfinite(norm):
                self.skipped_steps += 1  # the scaler skipped this step; not a gradient explosion
                continue
            for alarm in (self.stall.update(step, step_loss), self.explosion.update(step, norm)):
                if alarm is not None and alarm.verdict.value != "nonfinite":
                    t.anomalies.append({"kind": alarm.verdict.value, "step": alarm.step, "epoch": s.epoch,
                                        "message": alarm.reason})
                    t.log.warning("step %d: %s", alarm.step, alarm.reason)
        elapsed = time.perf_counter() - self.window_t0
        rate = len(steps) * t.cfg.training.batch_size / elapsed if elapsed > 0 else None
        # the steps this process took: after a resume, the ones before it took no time here
        per_step = (time.perf_counter() - s.started) / max(s.global_step - s.started_at_step, 1)
        t.on_progress(ProgressEvent("train", s.epoch, s.epochs, step_in_epoch, s.steps_per_epoch, s.global_step,
                                    loss=losses[-1], samples_per_s=rate,
                                    eta_s=per_step * (t.curriculum.total_steps - s.global_step),
                                    gpu=t.gpu_sampler.latest() if t.gpu_sampler else None))
        return None

    def on_epoch_end(self, t, s, record) -> None:
        t.log.info("epoch %d/%d: %s", s.epoch, s.epochs, {k: v for k, v in record.items() if k != "epoch"})
        validated = s.validated_value is not None
        t.on_progress(ProgressEvent("val", s.epoch, s.epochs, s.steps_per_epoch, s.steps_per_epoch, s.global_step,
                                    loss=record.get("val_loss") if validated else None,
                                    metric=record.get("val_accuracy")))

    # --- evidence -----------------------------------------------------------------------------------

    def _record_layers(self, epoch: int, step: int) -> None:
        """Per-layer gradient and weight norms of this step, for the vanishing-gradient diagnostic: one
        grouped norm per list, twice an epoch at most, left on the device until the window's read-back."""
        named = self.weight_params
        if not named or any(p.grad is None for _, p in named):
            return
        grads = torch.stack(torch._foreach_norm([p.grad for _, p in named])).float()
        weights = torch.stack(torch._foreach_norm([p.detach() for _, p in named])).float()
        self._pending_layers.append((epoch, step, torch.cat([grads, weights])))

    def _settle_layers(self, with_values: torch.Tensor | None) -> list[float]:
        """The pending layer norms read back in one go with `with_values` (the window's), recorded;
        returns `with_values` on the host."""
        pending, self._pending_layers = self._pending_layers, []
        parts = ([with_values] if with_values is not None else []) + [norms for _, _, norms in pending]
        if not parts:
            return []
        values = torch.cat(parts).tolist()
        start = 0 if with_values is None else with_values.numel()
        for epoch, step, norms in pending:
            half = norms.numel() // 2
            grad_list, weight_list = values[start:start + half], values[start + half:start + 2 * half]
            start += 2 * half
            self.layer_records.append({"epoch": epoch, "step": step,
                                       "grad_norm": [finite_or_str(v) for v in grad_list],
                                       "weight_norm": [finite_or_str(v) for v in weight_list]})
        return values[:with_values.numel()] if with_values is not None else []

    def _nonfinite(self, t: Any, epoch: int, batch_in_epoch: int, step: int, loss: float, norm: float, *,
                   state: DeviceSnapshot | None, state_step: int, steps: list) -> dict[str, Any]:
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        value = loss if what == "loss" else norm
        lr = t.optimizer.param_groups[0]["lr"]
        message = (f"non-finite {what} ({value}) at step {step} (epoch {epoch}, batch {batch_in_epoch}), lr {lr:.3g}")
        t.log.error(message)
        # the inputs as the model saw them, rebuilt now (the same epoch's mixing) from the host batches
        self._pending_dump = (state, state_step, [step.inputs_as_trained() for step in steps])
        recent = [r for r in self.recent if r[0] < step][-20:]
        return {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "what": what,
                "value": str(value), "loss": finite_or_str(loss), "grad_norm": finite_or_str(norm),
                "lr": lr, "message": message,
                "recent_losses": [[r[0], finite_or_str(r[1])] for r in recent],
                "recent_grad_norms": [[r[0], finite_or_str(r[2])] for r in recent]}

    def _save_nonfinite_dump(self, t: Any, info: dict[str, Any]) -> str:
        snapshot, state_step, batches = self._pending_dump
        if snapshot is None:  # CPU path: the model was never stepped with the bad gradients
            state = {"model": t.model.state_dict(), "optimizer": t.optimizer.state_dict()}
        else:
            state = snapshot.materialize(t.optimizer)
        path = t.run_dir / "nonfinite" / "last_good_state.pt"
        save_checkpoint(path, {"kind": "nonfinite_dump", "model": state["model"], "optimizer": state["optimizer"],
                               "state_step": state_step, "nonfinite_step": info["step"],
                               "batches": [{"inputs": x, "targets": y} for x, y in batches],
                               "config": t.cfg.model_dump(mode="json"), "rng": rng_state()})
        return str(path.relative_to(t.run_dir))

    @staticmethod
    def _open_steps_log(run_dir: Any, resumed_at: int | None) -> Any:
        if not run_dir:
            return None
        path = run_dir / "logs" / "steps.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        if resumed_at is not None and path.is_file():
            with path.open(newline="", encoding="utf-8") as f:  # rows past the resume point were not kept
                rows = list(csv.reader(f))
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

    # --- state --------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"stall": self.stall.state_dict(), "explosion": self.explosion.state_dict(),
                "step_losses": list(self.step_losses), "recent": [list(r) for r in self.recent],
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stall.load_state_dict(state["stall"])
        self.explosion.load_state_dict(state["explosion"])
        self.step_losses = list(state["step_losses"])
        self.recent.extend(tuple(r) for r in state["recent"])
        self.skipped_steps = state.get("skipped_steps", 0)
