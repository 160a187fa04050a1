"""Replay states: what `wf verify` re-trains a run's segments from.

At the start of every `checkpointing.replay_every_n_epochs`-th epoch (the first one included) the
run's full training state (the resume point of that moment: weights, optimizer, every stateful
part, the RNG and loader states, the position) is kept as `checkpoints/replay/epoch_NNN.pt`, a hard
link to the resume.pt written then (no second write). Every epoch's record carries the digest of the
weights it ended with (`weights`: step and sha256, and the evaluated EMA weights' digest when
validation judges those). From the state at the start of epoch e and the config, a verifier trains
epoch e again and must land on epoch e's recorded digest, bit for bit on the CPU: a claim about
training that anyone holding the run's files can recompute (proof-of-learning, Jia et al. 2021)."""

from __future__ import annotations

from typing import Any

from mlflow_core.atomic import atomic_link
from mlflow_core.training.callbacks.base import Callback
from mlflow_core.training.callbacks.resume import ResumePoints
from mlflow_core.training.checkpoint import weights_sha256

REPLAY_DIR = "checkpoints/replay"


def replay_state_name(epoch: int) -> str:
    return f"{REPLAY_DIR}/epoch_{epoch:03d}.pt"


class ReplayStates(Callback):
    def __init__(self, t: Any, resume_points: ResumePoints):
        self.every = t.cfg.checkpointing.replay_every_n_epochs
        self.enabled = t.keeps_resume and self.every > 0  # the same on every rank: a save is collective
        self.resume = resume_points

    def keeps(self, epoch: int) -> bool:
        return self.enabled and (epoch - 1) % self.every == 0

    def on_fit_start(self, t, s) -> None:
        # a fresh run's first state; with a curriculum the first stage builds its loader only when the
        # epoch starts, so its first epoch has no state to replay from
        if s.resume is None and self.keeps(1) and t.train_loader is not None:
            self.resume.save(t, s, 1, 0, t.new_tally(t.train_loader.generator.get_state()))
            self._keep(t, 1)

    def on_epoch_record(self, t, s, record) -> None:
        if t.run_dir is None:
            return
        weights = {"step": s.global_step, "sha256": weights_sha256(t.model.state_dict())}
        evaluated = t.evaluated_model()
        if evaluated is not t.model:
            weights["evaluated_sha256"] = weights_sha256(evaluated.state_dict())
        record["weights"] = weights

    def on_epoch_end(self, t, s, record) -> None:
        following = s.epoch + 1
        if s.epoch >= s.epochs or s.stopping or s.max_steps_reached or not self.keeps(following):
            return
        if not (self.resume.enabled and self.resume.after_epochs):  # else ResumePoints saved it just now
            self.resume.save(t, s, following, 0, t.new_tally(t.train_loader.generator.get_state()))
        self._keep(t, following)

    @staticmethod
    def _keep(t: Any, epoch: int) -> None:
        if t.run_dir is not None:  # resume.pt is replaced, never rewritten: the link keeps this state
            atomic_link(t.run_dir / "checkpoints" / "resume.pt", t.run_dir / replay_state_name(epoch))
