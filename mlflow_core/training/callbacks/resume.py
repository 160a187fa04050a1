"""Resume points: `checkpoints/resume.pt`, everything the rest of the run depends on after a given
step, written atomically (a kill at any moment leaves the previous one whole):
- every `resume_every_n_steps` steps, at the end of a check window;
- when a signal or the time limit stops the run (the run ends `interrupted`);
- after every epoch, for the next epoch's first step.
Under DDP every rank takes part at the same step: each rank's RNG and epoch counters are gathered,
and rank 0 writes. `restore` continues a run from its resume.pt exactly: the same shuffle, the same
RNG draws, the same weights as an uninterrupted run."""

from __future__ import annotations

import json
from typing import Any

from mlflow_core.atomic import atomic_write_json
from mlflow_core.errors import UserInputError
from mlflow_core.training.callbacks.base import Callback
from mlflow_core.training.callbacks.checkpoints import checkpoint_payload
from mlflow_core.training.checkpoint import load_checkpoint, save_checkpoint
from mlflow_core.training.seeding import rng_state
from mlflow_core.workflow.evidence import file_sha256

RESUME_POINT = "resume.json"  # checkpoints/resume.json: the latest resume point, as JSON (workflow/state.py reads it)


class ResumePoints(Callback):
    def __init__(self, t: Any):
        # the same on every rank (resume points are collective); only rank 0 has a run directory
        self.enabled = t.keeps_resume
        c = t.cfg.checkpointing
        self.every, self.after_epochs = c.resume_every_n_steps, c.save_last

    def on_step_end(self, t, s, step) -> None:
        if not self.enabled or s.stopping or s.max_steps_reached or t.monitor.window_open:
            return
        stop = t.interruption.requested(t)
        if self.every and s.global_step % self.every == 0 and not s.last_step_of_epoch and not stop:
            self.save(t, s, s.epoch, s.step_in_epoch, s.tally)
        if stop:
            s.metrics["resume"] = self.save(t, s, s.epoch, s.step_in_epoch, s.tally)
            s.stop("interrupted", t.interruption.stop_reason(s.global_step))

    def on_epoch_end(self, t, s, record) -> None:
        if self.enabled and self.after_epochs and s.epoch < s.epochs and not s.stopping and not s.max_steps_reached:
            # the next epoch from its first step: the loader's generator is already where it starts
            self.save(t, s, s.epoch + 1, 0, t.new_tally(t.train_loader.generator.get_state()))

    def save(self, t: Any, s: Any, epoch: int, step_in_epoch: int, tally: Any) -> dict[str, Any] | None:
        local = {"rng": rng_state(), **tally.state_dict()}
        by_rank = t.strategy.gather(local) if t.strategy.distributed else None
        if t.run_dir is None:
            return None
        path = t.run_dir / "checkpoints" / "resume.pt"
        save_checkpoint(path, {
            "kind": "resume", **checkpoint_payload(t, s, resume=True),
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": s.global_step, **local,
            "world_size": t.strategy.world_size, "by_rank": by_rank,
            "metrics": json.loads(json.dumps(s.metrics)),
        })
        point = {"path": str(path.relative_to(t.run_dir)), "epoch": epoch, "step": s.global_step,
                 "sha256": file_sha256(path), "world_size": t.strategy.world_size}
        # beside it, for commands that read no torch: where a run whose process died can resume from
        atomic_write_json(path.with_name(RESUME_POINT), point)
        return point


def restore(t: Any, s: Any, path: Any) -> None:
    """Load resume.pt into the freshly built run: weights, optimizer, every stateful part, the record
    so far and the position. Refused when it was written by another number of processes or with
    another config: an exact continuation needs both."""
    state = load_checkpoint(path, map_location=t.device)
    if state.get("kind") != "resume":
        raise UserInputError(f"{path}: not a resume checkpoint")
    saved_world, world = state.get("world_size", 1), t.strategy.world_size
    if saved_world != world:
        raise UserInputError(f"{path}: was written by {saved_world} process(es) and this run has "
                             f"{world}; an exact resume needs the same number.",
                             hint=f"Resume with `--nproc-per-node {saved_world}`" if saved_world > 1
                             else "Resume without --nproc-per-node.")
    if state.get("by_rank"):  # this rank's own RNG and epoch counters
        state.update(state["by_rank"][t.strategy.rank])
    if state["config"] != t.cfg.model_dump(mode="json"):
        raise UserInputError(f"{path}: was written with a different config; an exact resume needs the config "
                             "the run started with.", hint="Restore training_config.yaml, or start a new run "
                             "without --resume.")
    try:
        t.model.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserInputError(f"{path}: does not fit this model: {str(exc).splitlines()[0]}") from None
    for key, part in t.stateful_parts():
        if key in state:
            part.load_state_dict(state[key])
    metrics = state["metrics"]
    metrics.pop("resume", None)
    t.anomalies[:] = metrics.get("anomalies") or []
    s.metrics = {**s.metrics, **metrics, "status": "running", "recipe": t.recipe}
    s.resume = state
    s.first_epoch, s.global_step = state["epoch"], state["global_step"]
