"""`wf verify [PHASE|--all]`: every claim a phase's evidence makes, recomputed from the artifacts
(workflow/verification.py says what is recomputed and how; runners/verification.py trains and
evaluates). Fails closed: a claim that cannot be recomputed here is `unverifiable`, never a pass."""

from __future__ import annotations

import random
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow_core.config.loader import load_config
from mlflow_core.errors import UserInputError, did_you_mean
from mlflow_core.workflow.evidence import archived_evidence_path, read_evidence
from mlflow_core.workflow.fingerprints import flatten, vouched
from mlflow_core.workflow.lock import locked
from mlflow_core.workflow.phases import PHASES, load_phase
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.provenance import on_record
from mlflow_core.workflow.state import ProjectState, load_state
from mlflow_core.workflow.verification import PhaseVerification, config_difference, verify_data

DEFAULT_SEGMENTS = 1  # training segments re-trained per run: an epoch each, chosen at verification time


SOURCES = ("runs", "mlflow")  # where a verification reads the runs' files from


class RunFiles:
    """Where a verification reads a run's files (its checkpoints and kept states): the project's runs/
    folder, or, with `--from mlflow`, the MLflow run each training run logged them to (the tracking
    URI as training used it: MLFLOW_TRACKING_URI, else monitoring.mlflow_uri, else the project's
    store), downloaded once per run into a scratch folder that the verification removes."""

    def __init__(self, project: Project, source: str, scratch: Path | None = None):
        self.project, self.source, self.scratch = project, source, scratch
        self.fetched: dict[str, Path] = {}
        self.uri = None
        if source == "mlflow":
            from mlflow_core.monitoring.mlflow_store import tracking_uri

            self.uri = tracking_uri(project.root, load_config(project.config_path).monitoring.mlflow_uri)

    def of_run(self, run_dir: str, run_id: str | None, out: PhaseVerification) -> Path:
        local = self.project.inside(run_dir)
        if self.source == "runs":
            return local
        if run_dir not in self.fetched:
            from mlflow_core.monitoring.mlflow_store import fetch_run_checkpoints

            target = self.scratch / local.relative_to(self.project.root.resolve())
            why = (fetch_run_checkpoints(self.uri, run_id, target) if run_id else
                   "the evidence names no run id to find its MLflow run by")
            if why:
                out.add(f"files of {run_dir} (from MLflow)", "unverifiable", why)
            self.fetched[run_dir] = target
        return self.fetched[run_dir]


@dataclass(frozen=True)
class Verification:
    phases: list[PhaseVerification]
    seed: int  # the seed that chose the segments (`--seed` repeats a verification)

    @property
    def passed(self) -> bool:
        return bool(self.phases) and all(p.passed for p in self.phases)

    def to_json(self) -> dict:
        return {"passed": self.passed, "seed": self.seed, "phases": [p.to_json() for p in self.phases]}


@locked("wf verify")
def verify(project: Project, phase: str | None, *, every: bool, segments: int = DEFAULT_SEGMENTS,
           seed: int | None = None, source: str = "runs",
           on_message: Callable[[str], None] = lambda _m: None) -> Verification:
    """`phase`'s claims (default: the current phase's), or with `every` those of every phase that has
    recorded evidence, whatever `current_phase` says; the runs' files read from `source`."""
    if segments < 1:
        raise UserInputError(f"--segments {segments}: give at least 1 (the training segments to re-train per run).")
    if source not in SOURCES:
        raise UserInputError(f"--from {source}: choose one of: {', '.join(SOURCES)}." + did_you_mean(source, SOURCES))
    with tempfile.TemporaryDirectory(prefix="wf-verify-") as scratch:
        files = RunFiles(project, source, Path(scratch))
        return _verify(project, phase, every, segments, seed, files, on_message)


def _verify(project: Project, phase: str | None, every: bool, segments: int, seed: int | None, files: RunFiles,
            on_message: Callable[[str], None]) -> Verification:
    state = load_state(project)
    if every:
        names = [name for name in PHASES if read_evidence(project, name) is not None]
        if not names:
            raise UserInputError("no phase has recorded evidence yet: nothing to verify.",
                                 hint="Run `wf phase setup` first.")
    else:
        names = [load_phase(phase or state.current_phase or "setup").name]
    seed = secrets.randbits(48) if seed is None else seed
    rng = random.Random(seed)
    on_message(plan_line(project, names, segments))
    checked = [_verify_phase(project, state, name, segments, rng, files, on_message) for name in names]
    extra = [_authors_on_record(project, state)] + ([_history(project, state)] if every else [])
    return Verification(checked + [group for group in extra if group.claims], seed)


def plan_line(project: Project, names: list[str], segments: int) -> str:
    """What the verification will compute, said before it computes it: per phase, the runs whose best
    checkpoint is evaluated again and whose training is re-trained for `segments` epochs each, and about
    how long the re-training takes (the evaluations and the data's hashing come on top)."""
    from mlflow_core.runners.plans import about

    parts, runs = [], 0
    for name in names:
        evidence = read_evidence(project, name)
        if evidence is None or not evidence.intact:
            parts.append(f"{name}: its evidence only (nothing to recompute from)")
            continue
        what, count = _recomputed(project, name, evidence)
        parts.append(f"{name}: {what}")
        runs += count
    epochs = runs * segments
    trained = (f"; for each run its best checkpoint evaluated again and {segments} epoch{'s' * (segments != 1)} "
               f"re-trained from its kept states: {epochs:,} epoch{'s' * (epochs != 1)}"
               + about(project, epochs) if runs else "")
    return "Plan: the data hashed again; " + "; ".join(parts) + trained + "."


def _recomputed(project: Project, phase: str, evidence) -> tuple[str, int]:
    """What `phase`'s verification recomputes, in words, and how many training runs that is."""
    facts = evidence.facts
    if phase == "setup":
        return f"its checks, and its reproducibility run again ({facts.reproducibility.steps} steps)", 0
    if phase == "diagnostics":
        current = read_evidence(project, "baseline")
        own = 0 if current is not None and current.run_id == facts.diagnosed_run else 1
        trials = len(facts.diagnosis.trials)
        return (f"{'the diagnosed run, then ' * own}the diagnosis made again"
                + (f" with its {trials} fix trial{'s' * (trials != 1)}" if trials else "")), own
    if phase == "optimization":
        comparison = len(facts.comparison.runs) if facts.comparison is not None else 0
        best = int(facts.best is not None and facts.best.proof is not None)
        return (f"{comparison} comparison run{'s' * (comparison != 1)}" + (" and the best trial" if best else "")
                ), comparison + best
    if phase == "finalization":
        members = sum(1 for m in facts.seeds if m.test is not None and m.fold is None and m.proof is not None)
        return f"{members} final run{'s' * (members != 1)} on the test split, and the export", members
    return "1 run", 1


def _history(project: Project, state: ProjectState) -> PhaseVerification:
    """Every finished run in state.json against the evidence it names: the run's own copy under
    .wf/evidence/runs/, intact, of this project and phase, with the hash the run record names; and
    every phase_finished event names a run state.json records."""
    out = PhaseVerification("history", None)
    runs = {r.run_id: r for r in state.runs}
    wrong = []
    recorded = [r for r in state.runs if r.finished_at and r.summary.get("evidence_sha256")]
    for run in recorded:
        evidence = read_evidence(project, run.phase, archived_evidence_path(project, run.run_id))
        if evidence is None or not evidence.intact:
            wrong.append(f"run {run.run_id}: its evidence (.wf/evidence/runs/{run.run_id}.json) is "
                         + ("missing" if evidence is None else evidence.why_not_intact()))
        elif evidence.sha256 != run.summary["evidence_sha256"] or evidence.run_id != run.run_id:
            wrong.append(f"run {run.run_id}: its record names evidence {str(run.summary['evidence_sha256'])[:12]}, "
                         f"its evidence file holds {evidence.sha256[:12]}")
        elif state.project_id is not None and evidence.project_id != state.project_id:
            wrong.append(f"run {run.run_id}: its evidence was recorded by project {evidence.project_id}")
    events = [e for e in state.history if e.event == "phase_finished"]
    wrong += [f"the history's phase_finished event of {getattr(e, 'run_id', None)!r} ({e.time}) names no run "
              "state.json records" for e in events if getattr(e, "run_id", None) not in runs]
    if wrong:
        out.add("runs and their evidence", "failed", "; ".join(wrong[:5]) + (f" … ({len(wrong)} in all)"
                                                                             if len(wrong) > 5 else ""))
    else:
        out.add("runs and their evidence", "verified", f"{len(recorded)} finished runs, each with its own evidence "
                f"as its record names it; {len(events)} phase_finished events, each naming a recorded run")
    return out


def _authors_on_record(project: Project, state: ProjectState) -> PhaseVerification:
    """Each committed waiver and override: the person its entry names made the commit that added it."""
    out = PhaseVerification("waivers and overrides", None)
    for record in on_record(project, state):
        if record.shallow:
            out.add(f"{record.kind}: {record.where}", "unverifiable", record.shown())
            continue
        if record.commit is None:
            continue  # not committed yet (or no git): there is no author to compare
        out.add(f"{record.kind}: {record.where}", "failed" if record.mismatch else "verified", record.shown())
    return out


def _verify_phase(project: Project, state: ProjectState, phase: str, segments: int, rng: random.Random,
                  files: RunFiles, on_message: Callable[[str], None]) -> PhaseVerification:
    # torch: only here, where something is trained or evaluated again; its imports outside the timing
    # (every process that trains pays them alike)
    from mlflow_core.runners import verification

    verification.import_training_stack()
    started = time.perf_counter()
    out = _recompute_phase(project, state, phase, segments, rng, files, on_message)
    out.duration_s = round(time.perf_counter() - started, 3)
    return out


def _recompute_phase(project: Project, state: ProjectState, phase: str, segments: int, rng: random.Random,
                     files: RunFiles, on_message: Callable[[str], None]) -> PhaseVerification:
    evidence = read_evidence(project, phase)
    out = PhaseVerification(phase, evidence.run_id if evidence else None)
    if evidence is None:
        out.add("evidence", "failed", f"{phase} has recorded no evidence; run `wf phase {phase}`")
        return out
    if not evidence.intact:
        out.add("evidence", "failed", f".wf/evidence/{phase}.json {evidence.why_not_intact()}")
        return out
    facts = evidence.facts
    record = state.run(evidence.run_id or "")
    if record is None or record.phase != phase:
        out.add("run", "failed", f"the evidence names run {evidence.run_id!r}, which .wf/state.json does not record "
                f"as a {phase} run")
        return out
    if getattr(facts, "run_dir", record.dir) != record.dir:
        out.add("run", "failed", f"the evidence's facts are of {facts.run_dir}, and run {evidence.run_id} is "
                f"{record.dir}")
        return out
    recorded = facts.fingerprints.config.get("values") if facts.fingerprints else None
    if not recorded:
        out.add("evidence", "unverifiable", f"{phase} was recorded by a wf without fingerprints; run "
                f"`wf phase {phase}` again")
        return out
    on_message(f"{phase}: hashing the data again")
    out.claims.append(verify_data(project, facts.fingerprints.data, recorded))
    from mlflow_core.runners import verification

    if phase == "setup":
        cfg = _setup_config(project, recorded, out)
        if cfg is not None:
            verification.verify_setup(project, facts, cfg, out, on_message)
    elif phase == "diagnostics":
        verification.verify_diagnostics(project, facts, state, out, segments=segments, rng=rng,
                                        on_message=on_message, files=files)
    elif phase == "optimization":
        verification.verify_optimization(project, facts, evidence.run_id, out, segments=segments, rng=rng,
                                         on_message=on_message, files=files)
    elif phase == "finalization":
        verification.verify_finalization(project, facts, evidence.run_id, out, segments=segments, rng=rng,
                                         on_message=on_message, files=files)
    else:
        verification.verify_training(project, facts, evidence.run_id, out, segments=segments, rng=rng,
                                     on_message=on_message, files=files)
    return out


def _setup_config(project: Project, recorded: dict, out: PhaseVerification):
    """Setup keeps no checkpoint to carry its config: its checks are done again with training_config.yaml
    when that is the config setup verified (later phases' sections aside)."""
    cfg = load_config(project.config_path)
    differs = config_difference(vouched(recorded, "setup"), vouched(flatten(cfg.model_dump(mode="json")), "setup"))
    if differs is not None:
        out.add("config", "unverifiable", f"training_config.yaml is not the config setup verified ({differs}); "
                "`wf gate check setup` says what changed")
        return None
    out.add("config", "verified", "training_config.yaml validates and is the config setup verified")
    return cfg
