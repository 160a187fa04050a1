"""`wf verify`'s recomputation: what trains and evaluates (workflow/verification.py has the verdicts
and the torch-free claims).

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

from mlflow_core.config.loader import load_config
from mlflow_core.config.schema import WorkflowConfig
from mlflow_core.errors import UserInputError
from mlflow_core.training.augment import with_augmentation
from mlflow_core.training.callbacks.replay import replay_state_name
from mlflow_core.training.checkpoint import load_checkpoint, weights_sha256
from mlflow_core.training.data.sources import build_data
from mlflow_core.training.data_checks import check_data
from mlflow_core.training.evaluation import classification_metrics, predict_with_tta, segmentation_metrics
from mlflow_core.training.models import build_model, count_parameters
from mlflow_core.training.optim import resolve_device
from mlflow_core.training.trainer import Trainer
from mlflow_core.workflow.evidence import archived_evidence_path, file_sha256, read_evidence
from mlflow_core.workflow.facts import (
    DiagnosticsFacts,
    FinalizationFacts,
    OptimizationFacts,
    SetupFacts,
    TrainingFacts,
)
from mlflow_core.workflow.fingerprints import flatten
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.records import first_problem
from mlflow_core.workflow.verification import PhaseVerification, config_difference, expected_config

# Validation figures recomputed on a GPU may differ in the last bits (kernels reduce in other orders);
# on the CPU with deterministic settings they are bit-equal. Not yet measured on a GPU (bench/).
GPU_RELATIVE_TOLERANCE = 1e-4
# A segment re-trained on a GPU may land within this of the recorded weights (setup accepts the same for
# its two short runs); not yet measured on a GPU: bench/verify_device.py measures both.
GPU_REPLAY_TOLERANCE = 1e-5
COMPARED_FIGURES = ("val_loss", "val_accuracy", "val_f1", "val_mcc", "val_iou")
TEST_FIGURES = ("accuracy", "nll", "macro_f1", "mcc", "top5_accuracy", "mean_iou")


def import_training_stack() -> None:
    """What every process that trains imports once: torch (above), and TorchDynamo, which the first
    optimizer built imports (torch._compile; 1.4 s on 2 cores). Imported before a verification is
    timed, so that its duration is the recomputation's own."""
    import torch._dynamo  # noqa: F401


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


def verify_training(project: Project, facts: TrainingFacts, run_id: str | None, out: PhaseVerification, *,
                    segments: int, rng: random.Random, on_message: Callable[[str], None] = lambda _m: None,
                    label: str = "", files: Any = None) -> None:
    """A training phase's run (the baseline): its best checkpoint and, from the states it kept, its training."""
    recorded = (facts.fingerprints.config.get("values") if facts.fingerprints else None) or {}
    run = RunClaims(label, facts.run_dir, recorded, facts.checkpoints.best, facts.weights or {}, facts.replay,
                    facts.best_validation or {}, "validation", run_id=run_id)
    verify_run(project, run, out, segments=segments, rng=rng, on_message=on_message, files=files)


def verify_diagnostics(project: Project, facts: DiagnosticsFacts, state: Any, out: PhaseVerification, *,
                       segments: int, rng: random.Random, on_message: Callable[[str], None] = lambda _m: None,
                       files: Any = None) -> None:
    """The diagnosis made again on the run it diagnosed (every diagnostic, the fix trials), without
    writing anything: the same findings, the same verified fix, the same outcome. The diagnosed run's
    record (metrics.json) must be the one its evidence names, and its training recomputes too."""
    from mlflow_core.diagnostics.engine import diagnose_run

    name = f"the diagnosed run {facts.diagnosed_run}"
    run = state.run(facts.diagnosed_run)
    evidence = read_evidence(project, "baseline", archived_evidence_path(project, facts.diagnosed_run))
    if run is None or evidence is None or not evidence.intact:
        out.add(name, "unverifiable", "its run record or its evidence (.wf/evidence/runs/) is not in this project")
        return
    metrics = project.inside(evidence.facts.metrics.path)
    if not metrics.is_file():
        out.add(name, "unverifiable", f"{evidence.facts.metrics.path} is not on this machine")
        return
    if file_sha256(metrics) != evidence.facts.metrics.sha256:
        out.add(name, "failed", f"{evidence.facts.metrics.path} is not the record its evidence names (sha256 differs)")
        return
    current = read_evidence(project, "baseline")
    if current is None or current.run_id != facts.diagnosed_run:  # the current baseline is verified as baseline
        verify_training(project, evidence.facts, facts.diagnosed_run, out, segments=segments, rng=rng,
                        on_message=on_message, label="diagnosed run: ", files=files)
    on_message(f"Diagnosing {facts.diagnosed_run} again, with the fix trials")
    again = diagnose_run(project, "auto", run, fix=True, on_message=on_message, write=False).to_json()

    def shown(findings: list[Any]) -> list[tuple[str, str, float]]:
        return [(f["diagnostic"], f["cause"], round(float(f["confidence"]), 6)) for f in findings]

    claimed = facts.diagnosis.model_dump(mode="json")
    differences = []
    if shown(again["findings"]) != shown(claimed["findings"]):
        differences.append(f"findings {shown(again['findings'])[:3]} (recorded {shown(claimed['findings'])[:3]})")
    fix = next((t["label"] for t in again["trials"] if t.get("winner")), None)
    if fix != facts.verified_fix:
        differences.append(f"verified fix {fix!r} (recorded {facts.verified_fix!r})")
    if differences:
        out.add("diagnosis", "failed", "diagnosed again: " + "; ".join(differences))
    else:
        top = again["findings"][0] if again["findings"] else None
        out.add("diagnosis", "verified", "diagnosed again: " + (f"`{top['cause']}` ({top['diagnostic']}, confidence "
                f"{top['confidence']:.2f})" if top else "no finding") + (f"; fix verified by a trial: {fix}" if fix
                else "") + f"; {len(again['trials'])} trial(s)")


def verify_finalization(project: Project, facts: FinalizationFacts, run_id: str | None, out: PhaseVerification, *,
                        segments: int, rng: random.Random, on_message: Callable[[str], None] = lambda _m: None,
                        files: Any = None) -> None:
    """Each final member's best checkpoint evaluated again on the test split, its training replayed,
    and the exported weights those of the member the evidence says was exported."""
    recorded = (facts.fingerprints.config.get("values") if facts.fingerprints else None) or {}
    differs = config_difference(recorded, flatten(facts.config))
    if differs is not None:
        out.add("config", "failed", f"the evidence's config and its fingerprint disagree: {differs}")
        return
    bundle = None
    exported: dict[int, str] = {}
    tta = tuple(facts.config.get("finalization", {}).get("tta") or ())
    for member in facts.seeds:
        label = f"seed {member.seed}: " if member.fold is None else f"fold {member.fold} seed {member.seed}: "
        if member.test is None:
            continue  # did not complete: nothing was claimed of it
        if member.fold is not None or member.proof is None or member.run_dir is None:
            why = ("cross-validation members are not recomputed yet" if member.fold is not None else
                   "the evidence records nothing to recompute it from (an earlier wf)")
            out.add(f"{label}training and test figures", "unverifiable", why)
            continue
        config = expected_config(recorded, {"reproducibility.seed": member.seed, "training.epochs": facts.epochs})
        run = RunClaims(label, member.run_dir, config, member.proof.best, member.proof.weights or {},
                        member.proof.replay, member.test, "test", tta, run_id=f"{run_id}/seed_{member.seed}")
        work = verify_run(project, run, out, segments=segments, rng=rng, on_message=on_message, bundle=bundle,
                          files=files)
        bundle = work.bundle
        if work.best_weights is not None:
            exported[member.seed] = work.best_weights
    _verify_export(project, facts, exported, out)


def verify_optimization(project: Project, facts: OptimizationFacts, run_id: str | None, out: PhaseVerification, *,
                        segments: int, rng: random.Random, on_message: Callable[[str], None] = lambda _m: None,
                        files: Any = None) -> None:
    """The sweep's conclusion: each comparison run's best value recomputed (its best checkpoint
    evaluated again, its training replayed), the one-sided Welch t-test computed again from those
    values, and the best trial's value, on which the optimized config rests."""
    from mlflow_core.runners.optimization import compare

    recorded = (facts.fingerprints.config.get("values") if facts.fingerprints else None) or {}
    comparison, best, metric = facts.comparison, facts.best, facts.metric
    if comparison is None or best is None:
        out.add("comparison", "verified", "no trial completed, so the sweep claims no comparison")
        return
    bundle = None
    if not comparison.runs:
        out.add("comparison runs", "unverifiable", "the evidence records nothing to recompute them from (an earlier wf)")
    else:
        for run in comparison.runs:
            changes = {**(best.params if run.label == "optimized" else {}), "reproducibility.seed": run.seed}
            claims = RunClaims(f"{run.label} seed {run.seed}: ", run.run_dir, expected_config(recorded, changes),
                               run.proof.best if run.proof else None, (run.proof.weights if run.proof else None) or {},
                               run.proof.replay if run.proof else None, {metric: run.value}, "validation",
                               run_id=f"{run_id}/{run.label}_seed{run.seed}")
            bundle = verify_run(project, claims, out, segments=segments, rng=rng, on_message=on_message,
                                bundle=bundle, files=files).bundle
        listed = {(r.label, r.seed): r.value for r in comparison.runs}
        agree = all(listed.get(("baseline", s)) == v for s, v in zip(comparison.seeds, comparison.baseline)) and all(
            listed.get(("optimized", s)) == v for s, v in zip(comparison.seeds, comparison.optimized))
        again = compare(comparison.baseline, comparison.optimized, comparison.seeds, facts.direction == "maximize",
                        comparison.alpha, metric)
        if not agree or again["significant"] != comparison.significant or again["p_value"] != comparison.p_value:
            out.add("comparison", "failed", f"computed again from the runs' values: {again['verdict']}; the evidence "
                    f"says: {comparison.verdict}" + ("" if agree else " (and lists other values than its runs')"))
        else:
            out.add("comparison", "verified", f"the one-sided Welch t-test computed again from the runs' values: "
                    f"{again['verdict']}")
    trial_epochs = facts.study.trial_epochs
    if best.proof is None or best.run_dir is None:
        out.add(f"best trial {best.trial}", "unverifiable", "its run is not on this machine (a sweep worker's) or "
                "the evidence records nothing to recompute it from")
        return
    changes = {**best.params, "training.epochs": trial_epochs, "checkpointing.checkpoint_every_n_epochs": 0}
    claims = RunClaims(f"best trial {best.trial}: ", best.run_dir, expected_config(recorded, changes),
                       best.proof.best, best.proof.weights or {}, best.proof.replay, {metric: best.value}, "validation",
                       run_id=f"{run_id}/{Path(best.run_dir).name}")
    verify_run(project, claims, out, segments=segments, rng=rng, on_message=on_message, bundle=bundle,
               files=files)
    _verify_optimized_config(project, facts, out)


def _verify_optimized_config(project: Project, facts: OptimizationFacts, out: PhaseVerification) -> None:
    """configs/optimized_config.yaml sets the best trial's parameters."""
    ref, best = facts.optimized_config, facts.best
    if ref is None or best is None:
        return
    path = project.inside(ref.path)
    if not path.is_file():
        out.add(f"optimized config ({ref.path})", "unverifiable", "not on this machine")
        return
    values = flatten(load_config(path).model_dump(mode="json"))
    wrong = [f"{k} {values.get(k)!r} (the best trial's {v!r})" for k, v in best.params.items() if values.get(k) != v]
    out.add(f"optimized config ({ref.path})", "failed" if wrong else "verified",
            "; ".join(wrong) if wrong else "sets the best trial's parameters: "
            + ", ".join(f"{k} {v!r}" for k, v in best.params.items()))


def _verify_export(project: Project, facts: FinalizationFacts, exported: dict[int, str],
                   out: PhaseVerification) -> None:
    """export/model_state_dict.pt holds the weights of the member the evidence says was exported."""
    record = next((e for e in facts.exports if e.kind == "state_dict" and e.verified and e.path), None)
    if record is None:
        return
    name = f"export {record.path}"
    path = project.inside(record.path)
    if not path.is_file():
        out.add(name, "unverifiable", "not on this machine")
        return
    if file_sha256(path) != record.sha256:
        out.add(name, "failed", "the file is not the one the evidence records (its sha256 differs)")
        return
    digest = _digest(load_checkpoint(path))
    if digest is None:
        out.add(name, "failed", "the file holds no weights")
        return
    expected = exported.get(facts.exported_seed) if facts.exported_seed is not None else None
    if expected is None:
        out.add(name, "unverifiable", f"the exported member (seed {facts.exported_seed}) was not recomputed")
    elif digest != expected:
        out.add(name, "failed", f"its weights ({digest[:12]}) are not seed {facts.exported_seed}'s best checkpoint "
                f"({expected[:12]})")
    else:
        out.add(name, "verified", f"the weights of seed {facts.exported_seed}'s best checkpoint, whose test figures "
                "recomputed")


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
    weights = _digest(checkpoint)
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
        digest = _digest(state)
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


def verify_setup(project: Project, facts: SetupFacts, cfg: WorkflowConfig, out: PhaseVerification,
                 on_message: Callable[[str], None] = lambda _m: None) -> None:
    """Setup's checks done again with the config setup verified: the data's sizes, classes and
    overlaps, the model's forward pass, and the short reproducibility run's end weights."""
    on_message("Checking the data pipeline again")
    bundle = build_data(cfg, project.root)
    data = check_data(bundle, cfg.training.batch_size)
    keys = ("train_size", "val_size", "test_size", "num_classes", "class_counts_train", "class_counts_val",
            "overlap_train_val", "overlaps", "problems")
    recorded = facts.data.model_dump(mode="json")
    wrong = [f"{k} {data.get(k)!r} (recorded {recorded.get(k)!r})" for k in keys if data.get(k) != recorded.get(k)]
    out.add("data checks", "failed" if wrong else "verified", "; ".join(wrong) if wrong else
            f"train {data['train_size']}, val {data['val_size']}, test {data['test_size']}, {data['num_classes']} "
            "classes, the class counts and overlaps as recorded")
    model = build_model(cfg.model, bundle.num_classes, bundle.input_shape, project.root)
    model.eval()
    with torch.no_grad():
        shape = list(model(torch.stack([torch.as_tensor(bundle.train[0][0])] * 2)).shape)
    claimed = facts.model
    agree = claimed.ok and claimed.parameters == count_parameters(model) and claimed.output_shape == shape
    out.add("model forward pass", "verified" if agree else "failed",
            f"{count_parameters(model):,} parameters, output {shape}" + ("" if agree else
            f" (recorded {claimed.parameters} parameters, output {claimed.output_shape}, ok={claimed.ok})"))
    rep = facts.reproducibility
    if not rep.weights_sha256:
        out.add("reproducibility run", "unverifiable", "setup recorded no weights digest (an earlier wf); run "
                "`wf phase setup` again")
        return
    on_message(f"Training the reproducibility run again ({rep.steps} steps)")
    trainer = Trainer(cfg, project.root, None, run_id="verify-setup", phase="setup", data=bundle, short_check=True)
    result = trainer.fit(max_steps=rep.steps)
    digest = weights_sha256(result.model.state_dict())
    exact = str(resolve_device(cfg.training.device)) == "cpu"
    if digest == rep.weights_sha256:
        out.add("reproducibility run", "verified", f"{rep.steps} steps trained again: bit-equal weights ({digest[:12]})")
    else:
        out.add("reproducibility run", "failed" if exact else "unverifiable",
                f"{rep.steps} steps trained again: the weights hash to {digest[:12]}, setup recorded "
                f"{rep.weights_sha256[:12]}" + ("" if exact else " (on a GPU, kernels may differ in the last bits)"))


def _digest(payload: dict[str, Any]) -> str | None:
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
