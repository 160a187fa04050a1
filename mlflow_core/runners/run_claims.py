"""One training run's claims recomputed: its best checkpoint (the file, the run it names, its config,
its weights digest against its epoch's, its figures on its split evaluated again) and its training
(the kept states chained from the weights the config's seed initializes, epochs chosen at random
re-trained from their kept state). runners/verification.py says which runs each phase claims from.

Nothing here trusts a recorded figure it can compute: the config comes from the checkpoint or the
kept state itself (and must equal the one the evidence records), the data is built from the files,
the weights are the files' own, and the figures they are compared with are the evidence's."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.errors import UserInputError
from mlflow_core.training.augment import with_augmentation
from mlflow_core.training.callbacks.replay import replay_state_name
from mlflow_core.training.checkpoint import load_checkpoint, weights_sha256
from mlflow_core.training.data.sources import build_data
from mlflow_core.training.evaluation import classification_metrics, predict_with_tta, segmentation_metrics
from mlflow_core.training.trainer import Trainer
from mlflow_core.workflow.evidence import file_sha256
from mlflow_core.workflow.fingerprints import flatten
from mlflow_core.workflow.noise import chance_level
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.records import first_problem
from mlflow_core.workflow.units import percent
from mlflow_core.workflow.verification import PhaseVerification, config_difference

# Validation figures recomputed on a GPU may differ in the last bits (kernels reduce in other orders);
# on the CPU with deterministic settings they are bit-equal. Not yet measured on a GPU (bench/).
GPU_RELATIVE_TOLERANCE = 1e-4
# A segment re-trained on a GPU may land within this of the recorded weights (setup accepts the same for
# its two short runs); not yet measured on a GPU: bench/verify_device.py measures both.
GPU_REPLAY_TOLERANCE = 1e-5
COMPARED_FIGURES = ("val_loss", "val_accuracy", "val_f1", "val_mcc", "val_iou")
TEST_FIGURES = ("accuracy", "nll", "macro_f1", "mcc", "top5_accuracy", "mean_iou")


@dataclass
class RunClaims:
    """One training run's claims, as its phase's evidence records them."""
    label: str  # how claims name the run: "" for a phase's own run, "seed 7: " for a finalization member
    run_dir: str
    config: dict[str, Any]  # the resolved config it trained, dotted, as the evidence records it
    best: Any  # CheckpointRef of the best checkpoint (path in the project), or None
    weights: dict[int, Any]  # epoch → EpochWeights
    replay: Any  # ReplayRecord, or None
    figures: dict[str, Any]  # the best checkpoint's figures the evidence claims
    split: str  # which split they were measured on: validation or test
    tta: tuple[str, ...] = ()  # test-time flips the test figures were measured with
    run_id: str | None = None  # the run id its files must carry (checkpoints and states name their run)
    chance: dict[str, Any] | None = None  # the validation split's chance level the evidence records (baseline)


class _Recompute:
    """One run's recomputation: the run's config (from its own files) and the data, built once."""

    def __init__(self, project: Project, run: RunClaims, out: PhaseVerification, on_message: Callable[[str], None],
                 bundle: Any = None, files: Any = None):
        self.project, self.run, self.out, self.say = project, run, out, on_message
        self.files = files  # orchestration/verify.RunFiles: where the run's files are read from (None: runs/)
        self.cfg: WorkflowConfig | None = None
        self.bundle: Any = bundle
        self.best_weights: str | None = None  # the best checkpoint's weights digest, once its figures recomputed

    def add(self, name: str, status: str, detail: str) -> None:
        self.out.add(f"{self.run.label}{name}", status, detail)  # type: ignore[arg-type]

    def adopt_config(self, config: dict[str, Any], source: str) -> bool:
        """The config a run's own file carries, when it is the one the evidence records."""
        differs = config_difference(self.run.config, flatten(config))
        if differs is not None:
            self.add("config", "failed", f"{source} was trained with another config than the evidence records: "
                     f"{differs}")
            return False
        if self.cfg is None:
            try:
                self.cfg = WorkflowConfig.model_validate(config)
            except ValidationError as exc:
                self.add("config", "failed", f"{source} carries a config that does not validate: {first_problem(exc)}")
                return False
            self.add("config", "verified", f"{source} carries the config the evidence records")
        return True

    def data(self) -> Any:
        if self.bundle is None:
            self.bundle = with_augmentation(build_data(self.cfg, self.project.root), self.cfg.augmentation)
        return self.bundle

    def trainer(self, run_id: str, resume_from: Path | None = None) -> Trainer:
        return Trainer(self.cfg, self.project.root, None, run_id=run_id, phase="verify", data=self.data(),
                       resume_from=resume_from)

    def file(self, relative: str) -> Path:
        """A file of the run's (its checkpoints, its kept states) from where this verification reads
        them; any other file from the project."""
        prefix = self.run.run_dir.rstrip("/") + "/"
        if self.files is not None and relative.startswith(prefix):
            return self.files.of_run(self.run.run_dir, self.run.run_id, self.out) / relative[len(prefix):]
        return self.project.inside(relative)


def verify_run(project: Project, run: RunClaims, out: PhaseVerification, *, segments: int, rng: random.Random,
               on_message: Callable[[str], None], bundle: Any = None, files: Any = None) -> _Recompute:
    """One training run: its best checkpoint (weights digest, figures on its split) and its training
    (the kept states chained from the seed's initial weights, random epochs re-trained)."""
    work = _Recompute(project, run, out, on_message, bundle, files)
    if run.best is None:
        work.add("best checkpoint", "failed", "the evidence names no best checkpoint")
    else:
        _verify_best_checkpoint(work, run.best)
    _verify_training_states(work, segments, rng)
    return work


def _verify_best_checkpoint(work: _Recompute, best: Any) -> None:
    run, path = work.run, work.file(best.path)
    name = f"best checkpoint ({best.path})"
    if not path.is_file():
        work.add(name, "unverifiable", "not on this machine: run `wf verify` where the run's files are, or "
                 "`wf verify --from mlflow` where the run logged them")
        return
    digest = file_sha256(path)
    if digest != best.sha256:
        work.add(name, "failed", f"the file hashes to {digest[:12]}, the evidence records {best.sha256[:12]}")
        return
    checkpoint = load_checkpoint(path)
    if not _of_this_run(work, checkpoint, best.path) or not work.adopt_config(checkpoint.get("config") or {},
                                                                             best.path):
        return
    recorded = run.weights.get(best.epoch)
    weights = weights_digest(checkpoint)
    if weights is None:
        work.add(name, "failed", "the file holds no weights")
        return
    if recorded is None:
        work.add(name, "unverifiable", f"the evidence records no weights digest for epoch {best.epoch}")
        return
    if weights != (recorded.evaluated_sha256 or recorded.sha256):
        work.add(name, "failed", f"its weights (sha256 {weights[:12]}) are not those epoch {best.epoch} ended with "
                 f"({(recorded.evaluated_sha256 or recorded.sha256)[:12]})")
        return
    work.add(name, "verified", f"the file the evidence names, holding the weights epoch {best.epoch} ended with "
             f"({weights[:12]})")
    work.say(f"Evaluating {best.path} on the {run.split} split again")
    try:
        trainer = work.trainer("verify-best")
        trainer.build()
        trainer.model.load_state_dict(checkpoint["model"])
        figures, keys = _figures(work, trainer, run)
    except UserInputError:
        raise  # the project's data or model cannot be built: bad input, said as such
    except Exception as exc:  # a forged file can break evaluation anywhere: a claim that does not recompute
        work.add(f"{name}: {run.split} figures", "failed", f"could not be evaluated again: {_error(exc)}")
        return
    compared = [k for k in keys if k in run.figures and k in figures]
    if not compared:
        work.add(f"{name}: {run.split} figures", "unverifiable", f"the evidence records no {run.split} figures of it")
        return
    exact = trainer.device.type == "cpu"
    wrong = [f"{k} {_shown(figures[k])} (recorded {_shown(run.figures[k])})" for k in compared
             if not _agree(figures[k], run.figures[k], exact)]
    how = "bit-equal" if exact else f"within {GPU_RELATIVE_TOLERANCE:g} relative on {trainer.device}"
    if wrong:
        work.add(f"{name}: {run.split} figures", "failed", f"evaluated again on the {run.split} split: "
                 + "; ".join(wrong))
        return
    work.best_weights = weights
    work.add(f"{name}: {run.split} figures", "verified", f"evaluated again on the {run.split} split ({how}): "
             + ", ".join(f"{k} {_shown(figures[k])}" for k in compared))
    if run.chance is not None and run.split == "validation":
        _verify_chance(work, trainer)


def _verify_chance(work: _Recompute, trainer: Trainer) -> None:
    """What a predictor that learned nothing scores on the validation split (the yardstick of the
    baseline gate's beats_chance), from the split's class counts as this evaluation found them."""
    units = "pixels" if work.cfg.task == "segmentation" else "samples"
    again = chance_level(trainer.val_support, units)
    claimed = work.run.chance
    if again != claimed:
        wrong = [f"{k} {again.get(k)!r} (recorded {claimed.get(k)!r})" for k in again if again.get(k) != claimed.get(k)]
        work.add("chance level", "failed", "the validation split's class counts give " + "; ".join(wrong))
    else:
        work.add("chance level", "verified", f"{again['count']:,} validation {units}, the majority class "
                 f"{percent(again['majority_share'])} of them, as recorded")


def _of_this_run(work: _Recompute, payload: dict[str, Any], source: str) -> bool:
    """A checkpoint or state names the run that wrote it: it must be the run the evidence claims from."""
    expected = work.run.run_id
    if expected is None or payload.get("run_id") == expected:
        return True
    work.add("run", "failed", f"{source} was written by run {payload.get('run_id')!r}, not by {expected!r}, the run "
             "the evidence names")
    return False


def _figures(work: _Recompute, trainer: Trainer, run: RunClaims) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The checkpoint's figures on the split its claims are about, measured the way its phase did."""
    if run.split == "validation":
        return trainer.validate(), COMPARED_FIGURES
    cfg, data = work.cfg, work.data()
    plain, augmented, targets = predict_with_tta(trainer.model, data.test, cfg, trainer.device, run.tta)
    score = segmentation_metrics if cfg.task == "segmentation" else classification_metrics
    return score(augmented if augmented is not None else plain, targets, data.num_classes), TEST_FIGURES


def _verify_training_states(work: _Recompute, segments: int, rng: random.Random) -> None:
    run = work.run
    replay, weights = run.replay, run.weights
    if replay is None or not replay.epochs:
        work.add("training (replay)", "unverifiable", "the run kept no training states to re-train a segment from "
                 "(checkpointing.replay_every_n_epochs: 0, or an earlier wf); train it again with states kept")
        return
    states = {e: work.file(f"{run.run_dir}/{replay_state_name(e)}") for e in replay.epochs}
    missing = [e for e, p in states.items() if not p.is_file()]
    if missing:
        work.add("training (replay)", "unverifiable", f"the kept states of epochs {_epochs(missing)} are not on "
                 f"this machine ({run.run_dir}/checkpoints/replay/): run `wf verify` where the run's files are, or "
                 "`wf verify --from mlflow` where the run logged them")
        return
    loaded = {}
    for epoch, path in states.items():
        state = load_checkpoint(path)
        if state.get("kind") != "resume":
            work.add(f"training state of epoch {epoch}", "failed", f"{path.name} is not a training state")
            return
        if not _of_this_run(work, state, f"the kept state of epoch {epoch}"):
            return
        if not work.adopt_config(state.get("config") or {}, f"the kept state of epoch {epoch}"):
            return
        if state.get("world_size", 1) != 1:
            work.add("training (replay)", "unverifiable", f"the run trained on {state['world_size']} processes; "
                     "`wf verify` re-trains single-process runs only")
            return
        digest = weights_digest(state)
        if digest is None:
            work.add(f"training state of epoch {epoch}", "failed", f"{path.name} holds no weights")
            return
        loaded[epoch] = digest
    _verify_chain(work, loaded, weights)
    replayable = [e for e in replay.epochs if e in weights]
    for epoch in sorted(rng.sample(replayable, min(segments, len(replayable)))):
        _replay(work, epoch, states[epoch], weights[epoch])


def _verify_chain(work: _Recompute, loaded: dict[int, str], weights: dict[int, Any]) -> None:
    """Each kept state holds the weights the epoch before it ended with; the first one, the weights
    the config's seed initializes."""
    if 1 in loaded:
        trainer = work.trainer("verify-init")
        trainer.build()
        initial = weights_sha256(trainer.model.state_dict())
        seed = work.cfg.reproducibility.seed
        if initial != loaded[1]:
            work.add("initial weights", "failed", "the state kept at epoch 1 does not hold the weights that "
                     f"reproducibility.seed {seed} initializes ({loaded[1][:12]} against {initial[:12]})")
        else:
            work.add("initial weights", "verified", f"the state kept at epoch 1 holds the weights that "
                     f"reproducibility.seed {seed} initializes")
    broken = [e for e in sorted(loaded) if e > 1 and (e - 1 not in weights or weights[e - 1].sha256 != loaded[e])]
    if broken:
        work.add("kept training states", "failed", f"the states kept at epochs {_epochs(broken)} do not hold the "
                 "weights the epoch before each ended with")
    else:
        work.add("kept training states", "verified", f"{len(loaded)} states, each holding the weights the epoch "
                 "before it ended with")


def _replay(work: _Recompute, epoch: int, state: Path, recorded: Any) -> None:
    work.say(f"{work.run.label}training epoch {epoch} again from its kept state")
    trainer = work.trainer(f"verify-epoch-{epoch}", resume_from=state)
    try:
        trainer.fit(max_steps=recorded.step)
    except UserInputError as exc:
        work.add(f"training epoch {epoch} (replay)", "failed", exc.message)
        return
    except Exception as exc:  # a forged state can break training anywhere: a claim that does not recompute
        work.add(f"training epoch {epoch} (replay)", "failed", f"could not be re-trained: {_error(exc)}")
        return
    weights = trainer.model.state_dict()
    digest = weights_sha256(weights)
    name = f"training epoch {epoch} (replay)"
    if digest == recorded.sha256:
        work.add(name, "verified", f"re-trained from its kept state to step {recorded.step}: the weights are "
                 f"bit-equal to the recorded ones ({digest[:12]})")
        return
    difference = _gpu_difference(work, trainer, epoch, weights)
    if difference is not None and difference <= GPU_REPLAY_TOLERANCE:
        work.add(name, "verified", f"re-trained from its kept state to step {recorded.step} on {trainer.device}: "
                 f"max |Δw| {difference:.2g} against the kept state of epoch {epoch + 1} (within "
                 f"{GPU_REPLAY_TOLERANCE:g}; GPU kernels are not all bit-reproducible)")
        return
    within = f" (max |Δw| {difference:.2g} on {trainer.device})" if difference is not None else ""
    work.add(name, "failed", f"re-trained from its kept state to step {recorded.step}, the weights hash to "
             f"{digest[:12]}; the evidence records {recorded.sha256[:12]}{within}")


def _gpu_difference(work: _Recompute, trainer: Trainer, epoch: int, weights: dict[str, Any]) -> float | None:
    """On a GPU: the largest |Δw| between re-trained weights and those the next kept state holds (the
    chain verified them to be the recorded ones); None on the CPU, where only bit-equal counts."""
    if trainer.device.type == "cpu" or work.run.replay is None or epoch + 1 not in work.run.replay.epochs:
        return None
    kept = load_checkpoint(work.file(f"{work.run.run_dir}/{replay_state_name(epoch + 1)}"))["model"]
    return max((float((weights[k].detach().float().cpu() - kept[k].float()).abs().max()) for k in kept
                if k in weights and kept[k].is_floating_point()), default=0.0)


def weights_digest(payload: dict[str, Any]) -> str | None:
    """The digest of the weights a checkpoint or state holds, None when it holds none."""
    weights = payload.get("model")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return None
    return weights_sha256(weights)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _agree(now: Any, recorded: Any, exact: bool) -> bool:
    if isinstance(now, str) or isinstance(recorded, str):  # a non-finite loss is recorded as its string
        return str(now) == str(recorded)
    if exact:
        return float(now) == float(recorded)
    return math.isclose(float(now), float(recorded), rel_tol=GPU_RELATIVE_TOLERANCE, abs_tol=1e-6)


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else f"{float(value):.6g}"


def _epochs(epochs: list[int]) -> str:
    return ", ".join(map(str, epochs[:8])) + (f" … ({len(epochs)} in all)" if len(epochs) > 8 else "")
