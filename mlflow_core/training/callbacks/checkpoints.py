"""Model checkpoints: `best_model.pt` when the validation metric improves, `last_model.pt` every
epoch, `checkpoint_epoch_N.pt` every `checkpoint_every_n_epochs`, and `checkpoints/top/` with the
`keep_best` best epochs. Every checkpoint, resume.pt included, is built by `checkpoint_payload`:
the weights, the position, and `{state_key: state_dict()}` of every stateful part of the run."""

from __future__ import annotations

import math
from typing import Any

from mlflow_core.atomic import atomic_link
from mlflow_core.training.callbacks.base import Callback
from mlflow_core.training.checkpoint import save_checkpoint
from mlflow_core.training.seeding import rng_state
from mlflow_core.workflow.evidence import file_sha256


def checkpoint_payload(t: Any, s: Any, *, resume: bool) -> dict[str, Any]:
    """What a checkpoint carries. A model checkpoint holds the weights validation judged (the EMA's
    when it is evaluated) and the run's epochs so far; resume.pt the raw weights and everything the
    rest of the run depends on (its caller adds the position and the RNG states)."""
    model = t.model if resume else t.evaluated_model()
    parts = {key: part.state_dict() for key, part in t.stateful_parts() if resume or not part.resume_only}
    payload = {"model": model.state_dict(), "optimizer": t.optimizer.state_dict(), **parts,
               "config": t.cfg.model_dump(mode="json"), "run_id": t.run_id}
    if not resume:
        payload.update(ema_weights=model is not t.model, epoch=s.epoch, global_step=s.global_step, rng=rng_state(),
                       metrics={"epochs": s.metrics["epochs"], "best": s.metrics["best"]},
                       num_classes=t.data.num_classes, input_shape=list(t.data.input_shape),
                       normalization=t.data.normalization)
    return payload


class Checkpoints(Callback):
    def __init__(self, cfg: Any):
        c = cfg.checkpointing
        self.save_best, self.save_last, self.every, self.keep_best = (c.save_best, c.save_last,
                                                                      c.checkpoint_every_n_epochs, c.keep_best)
        self.maximize = cfg.validation.mode == "max"

    def on_fit_start(self, t, s) -> None:
        if s.resume is not None:
            self._tidy_kept_best(t, s.metrics)

    def on_validation_end(self, t, s, record) -> None:
        """The epoch's checkpoints are one payload: serialised once, into the first file it goes to,
        and hashed once; the other names link to that file (timm's saver does the same)."""
        if not t.run_dir:
            return
        saved, value = s.metrics["checkpoints"], s.validated_value
        best = value is not None and bool(record.get("improved")) and self.save_best
        top = (value is not None and self.keep_best > 1 and math.isfinite(value)
               and self._among_best(saved.setdefault("top", []), value))
        periodic = bool(self.every) and s.epoch % self.every == 0
        names = [name for name, wanted in (("best_model.pt", best), (f"top/epoch_{s.epoch:03d}.pt", top),
                                           (f"checkpoint_epoch_{s.epoch}.pt", periodic),
                                           ("last_model.pt", self.save_last)) if wanted]
        if not names:
            return
        refs = self._save(t, s, names)
        if best:
            saved["best"] = refs["best_model.pt"]
        if top:
            self._keep_among_best(t, saved["top"], {**refs[f"top/epoch_{s.epoch:03d}.pt"], "value": value})
        if periodic:
            saved["periodic"].append(refs[f"checkpoint_epoch_{s.epoch}.pt"])
        if self.save_last:
            saved["last"] = refs["last_model.pt"]

    def _save(self, t: Any, s: Any, names: list[str]) -> dict[str, dict[str, Any]]:
        folder = t.run_dir / "checkpoints"
        first = folder / names[0]
        save_checkpoint(first, checkpoint_payload(t, s, resume=False))
        size, digest = first.stat().st_size, file_sha256(first)
        for name in names[1:]:
            atomic_link(first, folder / name)
        return {name: {"path": str((folder / name).relative_to(t.run_dir)), "epoch": s.epoch, "step": s.global_step,
                       "bytes": size, "sha256": digest} for name in names}

    def _among_best(self, top: list[dict[str, Any]], value: float) -> bool:
        return len(top) < self.keep_best or (value > top[-1]["value"] if self.maximize else value < top[-1]["value"])

    def _keep_among_best(self, t: Any, top: list[dict[str, Any]], entry: dict[str, Any]) -> None:
        """checkpoints/top/: the `keep_best` best epochs so far, best first in metrics. A new one is
        written before the one it pushes out is deleted, so a kill between the two leaves one extra
        file, never one missing (and a resume tidies up what the list no longer names)."""
        top.append(entry)
        top.sort(key=lambda e: (-e["value"] if self.maximize else e["value"], e["epoch"]))  # ties: the earlier first
        for dropped in top[self.keep_best:]:
            (t.run_dir / dropped["path"]).unlink(missing_ok=True)
        del top[self.keep_best:]

    @staticmethod
    def _tidy_kept_best(t: Any, metrics: dict[str, Any]) -> None:
        """At a resume: files in checkpoints/top/ that the restored list does not name were written by
        the interrupted process after its resume point."""
        if not t.run_dir or not (t.run_dir / "checkpoints" / "top").is_dir():
            return
        named = {e["path"] for e in metrics["checkpoints"].get("top", [])}
        for path in (t.run_dir / "checkpoints" / "top").glob("epoch_*.pt"):
            if str(path.relative_to(t.run_dir)) not in named:
                path.unlink(missing_ok=True)
