"""TensorBoard event files for a run (`monitoring.tensorboard: true`, experiment tracking as labs use it).

Written by the process that writes the run's files (rank 0 under DDP) to `runs/<run>/tensorboard/`,
with torch's SummaryWriter: per step the loss, gradient norm and learning rate (from the values each
monitoring window reads back anyway: no extra device sync), per epoch every figure of the epoch's
record, and at the end the hyperparameters with the run's results for the HParams dashboard.
`tensorboard --logdir runs` then compares every run, trial and seed of the project.

The event files are for looking at, not evidence: metrics.json and steps.csv are the record. So a
failing write here (a full disk) is logged once and ends the tracking, not the run."""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
from pathlib import Path
from typing import Any

from mlflow_core.errors import UserInputError

TENSORBOARD_DIR = "tensorboard"


def require_tensorboard() -> None:
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise UserInputError("monitoring.tensorboard is on and the tensorboard package is not installed.",
                             hint="Install it with `pip install 'wf-phases[tensorboard]'`, or set "
                             "monitoring.tensorboard: false.")


class TensorBoardTracker:
    def __init__(self, run_dir: Path, log: logging.Logger, *, resumed_at: int | None = None):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log = log
        self.directory = run_dir / TENSORBOARD_DIR
        self.writer: Any = None
        # a resumed run trains its steps from `resumed_at` again: the events an interrupted process
        # wrote for them are hidden, so that each step shows once
        try:
            self.writer = SummaryWriter(str(self.directory), purge_step=resumed_at)
        except OSError as exc:
            log.warning("TensorBoard events are not written to %s: %s", self.directory, exc)

    def steps(self, steps: list[int], losses: list[float], norms: list[float], lr: float,
              gpu: dict[str, float] | None) -> None:
        def write() -> None:
            for step, loss, norm in zip(steps, losses, norms):
                self.writer.add_scalar("train/loss", loss, step)
                self.writer.add_scalar("train/grad_norm", norm, step)
            self.writer.add_scalar("train/lr", lr, steps[-1])
            if gpu is not None:
                self.writer.add_scalar("gpu/utilization_percent", gpu["utilization"], steps[-1])
                self.writer.add_scalar("gpu/memory_used_mib", gpu["memory_used_mib"], steps[-1])
        self._guarded(write)

    def epoch(self, record: dict[str, Any], last_step: int) -> None:
        """The epoch's figures at its last step, so that they line up with the step curves (and a
        resume from the epoch's end keeps them)."""
        def write() -> None:
            for key, value in record.items():
                if key == "epoch" or isinstance(value, bool):
                    continue
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"epoch/{key}", value, last_step)
                elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
                    for index, item in enumerate(value):  # per class (IoU) or per rank (data wait)
                        self.writer.add_scalar(f"epoch/{key}/{index}", item, last_step)
            self.writer.add_scalar("epoch/epoch", record["epoch"], last_step)
            self.writer.flush()  # an epoch's events survive a kill
        self._guarded(write)

    def close(self, hparams: dict[str, Any], results: dict[str, float]) -> None:
        if self.writer is None:
            return
        finite = {k: v for k, v in results.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self._guarded(lambda: self.writer.add_hparams(hparams, finite, run_name="."))
        self._guarded(lambda: self.writer.close())
        self.writer = None

    def _guarded(self, write: Any) -> None:
        if self.writer is None:
            return
        try:
            write()
        except OSError as exc:
            self.log.warning("TensorBoard events are no longer written to %s: %s", self.directory, exc)
            self.writer = None


def run_hparams(cfg: Any) -> dict[str, Any]:
    """What the HParams dashboard compares runs by: the settings a sweep or a person changes."""
    t = cfg.training
    return {"model": cfg.model.label, "optimizer": t.optimizer, "learning_rate": t.learning_rate,
            "batch_size": t.batch_size, "weight_decay": t.weight_decay, "epochs": t.epochs,
            "scheduler": t.scheduler.name, "precision": t.precision, "seed": cfg.reproducibility.seed,
            "label_smoothing": t.label_smoothing, "loss": t.loss.name}


WANDB_DIR = "wandb"


def require_wandb() -> None:
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise UserInputError("monitoring.wandb is on and the wandb package is not installed.",
                             hint="Install it with `pip install 'wf-phases[wandb]'`, or set monitoring.wandb: false.")


class WandbTracker:
    """One W&B run per wf run, named and identified by the wf run id, grouped by the wf project, its
    job type the phase, tagged with the phase and the run's kind, and the commit the code is at.
    Offline unless WANDB_MODE says otherwise: the files go to runs/<run>/wandb/ and `wandb sync`
    uploads them. W&B's own system metrics are off (they read every GPU of a shared node): wf's GPU
    figures are logged instead. Like TensorBoard's events these are for looking at: a failure (no
    key, no network, a full disk) is logged once and ends the tracking, never the run.

    A resumed run continues the same W&B run (the same id) from where the killed process stopped
    logging: the steps between the resume point and the kill, trained again, are in the first
    process's records already, so they are not logged twice (W&B keeps every row it is given, and
    offline each process writes a folder of its own)."""

    def __init__(self, run_dir: Path, run_id: str, project: str, config: dict[str, Any], log: logging.Logger,
                 *, resumed: bool, group: str | None = None, job_type: str | None = None,
                 tags: list[str] | None = None, commit: str | None = None):
        require_wandb()
        self.log, self.run, self.directory, self.wandb_id = log, None, run_dir / WANDB_DIR, _wandb_id(run_id)
        self.offline = os.environ.get("WANDB_MODE", "offline") in ("offline", "dryrun")
        # the last step row and epoch row earlier processes of this run logged (-1: none)
        self.logged = _logged(self.directory) if resumed else {"step": -1, "epoch": -1}
        try:
            import wandb

            self.directory.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=project, name=run_id, id=self.wandb_id, resume="allow" if resumed else None,
                dir=str(run_dir), config=config, mode="offline" if self.offline else os.environ["WANDB_MODE"],
                group=group, job_type=job_type, tags=[t[:64] for t in tags or []] or None,
                settings=wandb.Settings(x_disable_stats=True, console="off", silent=True, disable_git=True,
                                        x_save_requirements=False, **({"git_commit": commit} if commit else {})))
        except Exception as exc:  # wandb raises many types (auth, network, usage): tracking stops, the run goes on
            log.warning("Weights & Biases is not logging this run: %s", exc)

    def steps(self, steps: list[int], losses: list[float], norms: list[float], lr: float,
              gpu: dict[str, float] | None) -> None:
        def write() -> None:
            for step, loss, norm in zip(steps, losses, norms):
                if step <= self.logged["step"]:
                    continue
                row = {"train/loss": loss, "train/grad_norm": norm}
                if step == steps[-1]:
                    row["train/lr"] = lr
                    if gpu is not None:
                        row.update({"gpu/utilization_percent": gpu["utilization"],
                                    "gpu/memory_used_mib": gpu["memory_used_mib"]})
                self.run.log(row, step=step)
            self._record("step", steps[-1])
        self._guarded(write)

    def epoch(self, record: dict[str, Any], last_step: int) -> None:
        if last_step <= self.logged["epoch"]:  # the killed process logged this epoch
            return
        figures = {f"epoch/{k}": v for k, v in record.items()
                   if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        def write() -> None:
            # the epoch's row shares its last step with that step's loss: W&B merges rows of one step
            self.run.log({**figures, "epoch/epoch": record["epoch"]}, step=last_step)
            self._record("epoch", last_step)
        self._guarded(write)

    def _record(self, family: str, step: int) -> None:
        """Where the logging has got to, for a resumed process: a temp file renamed, without fsync (a
        write lost to a power cut costs a few rows logged twice, never the run)."""
        if step > self.logged[family]:
            self.logged[family] = step
            tmp = self.directory / f".{LOGGED_FILE}.tmp"
            tmp.write_text(json.dumps(self.logged), encoding="utf-8")
            os.replace(tmp, self.directory / LOGGED_FILE)

    def close(self, results: dict[str, float], failed: bool) -> str | None:
        """Finish the W&B run; the command that uploads it when it was logged offline (every folder
        of this run: a resumed run's processes each wrote one)."""
        if self.run is None:
            return None
        # the results as a last history row as well as the summary: W&B's offline runs sometimes
        # lose their summary record (wandb/wandb#7227), and a synced summary falls back to each key's
        # last logged value
        self._guarded(lambda: self.run.log(dict(results)))
        self._guarded(lambda: self.run.summary.update(results))
        sync = None
        if self.offline and self.run:
            own = Path(self.run.dir.rsplit("/files", 1)[0])
            folders = sorted({*(f.parent for f in own.parent.glob(f"offline-run-*/run-{self.wandb_id}.wandb")), own})
            sync = "wandb sync " + " ".join(shlex.quote(str(f)) for f in folders)
        self._guarded(lambda: self.run.finish(exit_code=1 if failed else 0))
        self.run = None
        return sync

    def _guarded(self, write: Any) -> None:
        if self.run is None:
            return
        try:
            write()
        except Exception as exc:  # as at init: tracking ends, the run goes on
            self.log.warning("Weights & Biases stopped logging this run: %s", exc)
            self.run = None


LOGGED_FILE = "logged_through.json"


def _logged(directory: Path) -> dict[str, int]:
    """The last step row and epoch row earlier processes of this run logged to W&B (-1: none, or
    the record unreadable)."""
    try:
        recorded = json.loads((directory / LOGGED_FILE).read_text(encoding="utf-8"))
        return {family: int(recorded[family]) for family in ("step", "epoch")}
    except (OSError, ValueError, KeyError, TypeError):
        return {"step": -1, "epoch": -1}


def _wandb_id(run_id: str) -> str:
    """W&B run ids allow letters, digits, - and _ (up to 128)."""
    import re

    return re.sub(r"[^A-Za-z0-9_-]", "-", run_id)[:128]
