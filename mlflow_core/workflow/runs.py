"""The project's runs, newest first, and what differs between two of them (`wf runs`).

Read from what wf recorded: `.wf/state.json` for each run, and for the config a training run used,
its `logs/metrics.json`. Nothing here imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow_core.errors import UserInputError
from mlflow_core.workflow.evidence import read_evidence
from mlflow_core.workflow.fingerprints import changed_keys, flatten
from mlflow_core.workflow.lock import held
from mlflow_core.workflow.phases import PHASE_ORDER
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.records import RunMetrics, load_run_metrics
from mlflow_core.workflow.state import ProjectState, RunRecord, gone_runs, load_state

KINDS = {"trials": "trial", "comparison": "comparison"}  # the folder a training run is in → its kind


def run_kind(run_dir: Path, phase: str) -> str:
    """What a training run is to its phase, from the folder it is in: a trial, a comparison run, a
    final seed, or the phase's own training (how trackers tag it)."""
    return KINDS.get(run_dir.parent.name, "final" if phase == "finalization" else "training")


def run_rows(project: Project, phase: str | None = None, last: int | None = None) -> list[dict[str, Any]]:
    """One row per run, newest first: id, phase, status, passed, start, duration, best metric."""
    if phase is not None and phase not in PHASE_ORDER:
        raise UserInputError(f"--phase {phase!r}: not a phase; phases: {', '.join(PHASE_ORDER)}.")
    state = load_state(project)
    gone_runs(project, state, lock_held=held(project))  # shown as interrupted (the next command records it)
    runs = [r for r in state.runs if phase is None or r.phase == phase]
    judged = {}
    for name in PHASE_ORDER:  # the run each gate judges: the one its evidence was recorded from
        evidence = read_evidence(project, name)
        if evidence is not None and evidence.run_id:
            judged[name] = evidence.run_id
    rows = []
    for run in reversed(runs):
        summary = run.summary or {}
        rows.append({"run_id": run.run_id, "phase": run.phase, "status": run.status, "passed": run.passed,
                     "started_at": run.started_at, "finished_at": run.finished_at,
                     "duration_s": summary.get("duration_s"), "best": summary.get("best"),
                     "epochs": summary.get("epochs_completed"), "dir": run.dir,
                     "judged": judged.get(run.phase) == run.run_id})
    return rows[:last] if last else rows


def find_run(project: Project, ref: str, state: ProjectState | None = None) -> RunRecord:
    """A run by its id or a unique prefix of it."""
    runs = (state or load_state(project)).runs
    exact = [r for r in runs if r.run_id == ref]
    matches = exact or [r for r in runs if r.run_id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserInputError(f"no run {ref!r} in {project.relative(project.state_path)}.",
                             hint="`wf runs` lists the run ids.")
    raise UserInputError(f"{ref!r} matches {len(matches)} runs ({', '.join(r.run_id for r in matches[:5])}"
                         f"{' …' if len(matches) > 5 else ''}); give more of the id.")


def training_runs(project: Project, run: RunRecord) -> list[str]:
    """The training runs a phase run holds besides its own (an optimization's trials and comparison
    runs, a finalization's seeds and folds), as paths inside its directory."""
    run_dir = project.inside(run.dir)
    return sorted(str(p.parent.parent.relative_to(run_dir)) for p in run_dir.glob("*/**/logs/metrics.json"))


def training_record(project: Project, ref: str) -> tuple[str, RunRecord, RunMetrics]:
    """The training run `ref` names, with its metrics.json record: a run id (or a unique prefix), or
    RUN/PATH for one of the training runs a phase run holds (`optimization-…/trials/trial_003`,
    `finalization-…/seed_42`). A phase run that holds exactly one stands for it."""
    run_ref, _, sub = ref.partition("/")
    run = find_run(project, run_ref)
    run_dir = project.inside(run.dir)
    held = training_runs(project, run)
    if sub:
        target = (run_dir / sub).resolve()
        if run_dir.resolve() not in target.parents:
            raise UserInputError(f"{ref}: not inside the directory of run {run.run_id}.")
        if not (target / "logs" / "metrics.json").is_file():
            raise UserInputError(f"{ref}: not a training run of {run.run_id} (no logs/metrics.json there).",
                                 hint=_held_hint(run, held))
        return f"{run.run_id}/{sub.strip('/')}", run, load_run_metrics(target / "logs" / "metrics.json")
    if (run_dir / "logs" / "metrics.json").is_file():
        return run.run_id, run, load_run_metrics(run_dir / "logs" / "metrics.json")
    if len(held) == 1:
        return f"{run.run_id}/{held[0]}", run, load_run_metrics(run_dir / held[0] / "logs" / "metrics.json")
    if held:
        raise UserInputError(f"run {run.run_id} ({run.phase}) holds {len(held)} training runs; name one as "
                             f"{run.run_id}/PATH.", hint=_held_hint(run, held))
    raise UserInputError(f"{project.relative(run_dir / 'logs' / 'metrics.json')}: not found; run {run.run_id} "
                         f"({run.phase}) recorded no training config of its own.",
                         hint="Compare training runs: baseline runs, or an optimization's or finalization's own.")


def _held_hint(run: RunRecord, held: list[str]) -> str:
    if not held:
        return f"Run {run.run_id} holds no training runs."
    shown = ", ".join(f"{run.run_id}/{h}" for h in held[:6])
    return f"Its training runs: {shown}{' …' if len(held) > 6 else ''}."


def config_diff(project: Project, ref_a: str, ref_b: str) -> dict[str, Any]:
    """The dotted config keys whose values differ between two training runs, with both values, and
    each run's best result and status (an interrupted run has no final result)."""
    (label_a, run_a, rec_a), (label_b, run_b, rec_b) = training_record(project, ref_a), training_record(project, ref_b)
    a, b = flatten(rec_a.config), flatten(rec_b.config)
    changed = [{"key": key, "a": a.get(key), "b": b.get(key)} for key in changed_keys(a, b)]

    def best(label: str, run: RunRecord, record: RunMetrics) -> Any:
        if label == run.run_id:  # the phase run itself: its best as `wf runs` shows it
            return (run.summary or {}).get("best")
        return record.best.model_dump(mode="json") if record.best else None

    return {"a": label_a, "b": label_b, "changed": changed,
            "best": {label_a: best(label_a, run_a, rec_a), label_b: best(label_b, run_b, rec_b)},
            "status": {label_a: rec_a.status, label_b: rec_b.status}}
