"""State file, lock and the state machine's gates, on hand-made evidence (no training, no torch)."""

import json

import pytest

from mlflow_core.errors import ProjectBusyError, StateError
from mlflow_core.workflow.evidence import read_evidence, write_evidence
from mlflow_core.workflow.facts import FileRef, SetupFacts, TrainingFacts
from mlflow_core.workflow.gates import entry_verdict, evaluate_gate
from mlflow_core.workflow.lock import locked
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.scaffold import init_project
from mlflow_core.workflow.state import Decision, RunRecord, load_state, save_state


@pytest.fixture
def project(tmp_path):
    return init_project(tmp_path / "p")


def _fake_setup(project, state):
    """A setup gate that holds: its evidence, the environment report it names, the manual ticks."""
    from mlflow_core.workflow.evidence import file_sha256

    report = project.reports_dir / "environment.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("env")
    state.runs.append(RunRecord(run_id="setup-1", phase="setup", status="completed", started_at="t0",
                                finished_at="t0", dir="runs/setup-1"))
    write_evidence(project, "setup", "setup-1", SetupFacts.model_validate({
        "config_sha256": file_sha256(project.config_path), "config_valid": True,
        "environment": {"report": {"path": "reports/environment.md", "sha256": file_sha256(report)},
                        "summary": "Python 3.11"},
        "seeds": {"seed": 42, "seeded": ["torch"], "deterministic": True},
        "reproducibility": {"steps": 3, "device": "cpu", "identical": True, "passed": True, "max_abs_diff": 0.0,
                            "precision": {"mode": "fp32", "requested": "fp32", "cpu_native": None,
                                          "cpu_slowdown": None, "note": None, "grad_scaler": False,
                                          "skipped_steps": 0, "final_scale": None}},
        "data": {"source": "test", "train_size": 1, "val_size": 1, "test_size": 0, "input_shape": [1],
                 "batch_shape": [1, 1], "input_dtype": "float32", "label_dtype": "int64", "num_classes": 2,
                 "input_min": 0.0, "input_max": 1.0, "class_counts_train": {"0": 1}, "class_counts_val": {"1": 1},
                 "imbalance_ratio": None, "overlap_train_val": 0, "overlaps": {}, "class_names": None,
                 "scanned": {"train": 1, "val": 1}, "problems": [], "warnings": []},
        "model": {"ok": True, "name": "m", "parameters": 1}}))
    path = project.checklist_path("reproducibility")
    path.write_text(path.read_text().replace("- [ ] Data source", "- [x] Data source")
                    .replace("- [ ] `training_config.yaml` committed", "- [x] `training_config.yaml` committed"))


def _fake_baseline(project, state, status="completed", decision=None):
    run = RunRecord(run_id="baseline-1", phase="baseline", status=status, started_at="t", finished_at="t2",
                    dir="runs/baseline-1")
    state.runs.append(run)
    state.current_phase = "baseline"
    state.entered_from["baseline"] = "setup"
    write_evidence(project, "baseline", "baseline-1", _training_facts(
        status=status, epochs_completed=3, first_epoch_train_loss=2.0, best_train_loss=0.5, nonfinite=None,
        steps=30, checkpoints={"best": {"path": "x.pt", "sha256": "ab" * 32, "epoch": 2, "step": 20}},
        gpu={"available": False, "reason": "none"}, best_validation={"val_mcc": 0.9, "val_accuracy": 0.91},
        chance={"units": "samples", "count": 300, "majority_class": 0, "majority_share": 0.1, "prior_nll": 2.3}))
    if decision:
        state.decision = Decision(phase="baseline", choice=decision[0], next_phase=decision[1], time="t3",
                                  after_run="baseline-1")
    return run


def _training_facts(**facts):
    """A baseline's evidence: `facts` over what a short CPU run records."""
    return TrainingFacts.model_validate({
        "run_dir": "runs/baseline-1", "device": "cpu", "status": "completed", "stop_reason": None,
        "epochs_completed": 3, "steps": 30, "duration_s": 1.0, "first_epoch_train_loss": 2.0, "best_train_loss": 0.5,
        "best": None, "target": None, "nonfinite": None, "anomalies": [], "checkpoints": {}, "gpu": None,
        "data_wait_fraction": None, "metrics": {"path": "runs/baseline-1/logs/metrics.json", "sha256": "cd" * 32},
        **facts})


def test_state_round_trip_and_history(project):
    state = load_state(project)
    assert state.schema_version == 1 and state.history[0].event == "init"
    state.record("decision", phase="baseline", choice="finalize")
    save_state(project, state)
    again = load_state(project)
    assert again.history[-1].model_dump()["choice"] == "finalize"


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "line 1, column 2: not valid JSON"),
    ('{"schema_version": 99}', "schema_version 99 is not supported"),
    ('{"runs": "oops"}', "runs: Input should be a valid list"),
])
def test_corrupt_state_is_named_and_left_alone(project, content, fragment):
    project.state_path.write_text(content)
    with pytest.raises(StateError) as exc:
        load_state(project)
    assert str(project.state_path) in str(exc.value) and fragment in str(exc.value)
    assert project.state_path.read_text() == content


def test_one_writer_per_project(project):
    @locked("wf decide {choice}")
    def decide(project, choice, reason=None):
        return f"decided {choice}"

    @locked("wf phase {phase}")
    def run_phase(project, phase):
        with pytest.raises(ProjectBusyError, match=r"in use by `wf phase baseline` \(pid \d+\)"):
            decide(project, "finalize")
        assert "`wf phase baseline`" in project.lock_path.read_text()

    run_phase(project, "baseline")
    assert decide(project, choice="finalize") == "decided finalize"  # released
    assert project.lock_path.read_text() == ""


def test_fresh_project_cannot_start_baseline(project):
    verdict = entry_verdict(project, load_state(project), "baseline")
    assert not verdict.allowed and "setup gate is closed" in verdict.reason
    assert verdict.unblock == "wf gate check setup"
    assert entry_verdict(project, load_state(project), "setup").allowed


def test_baseline_gate_needs_decision_and_manual_items(project):
    state = load_state(project)
    _fake_baseline(project, state)
    gate = evaluate_gate(project, state, "baseline")
    assert not gate.passed
    open_ids = {i.id for i in gate.open_items}
    # report_generated fails: no report recorded in this hand-made evidence
    assert open_ids == {"results_reviewed", "decision_made", "report_generated"}


def test_decision_picks_the_next_phase(project):
    state = load_state(project)
    _fake_setup(project, state)  # every gate on the path must hold, not only the baseline's
    _fake_baseline(project, state, decision=("optimize", "optimization"))
    # make the gate pass apart from what the decision controls
    facts = read_evidence(project, "baseline").facts
    report = project.reports_dir / "baseline_results.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("r")
    from mlflow_core.workflow.evidence import file_sha256
    facts.report = FileRef(path="reports/baseline_results.md", sha256=file_sha256(report))
    write_evidence(project, "baseline", "baseline-1", facts)
    text = project.checklist_path("post_baseline").read_text().replace("- [ ] Learning", "- [x] Learning")
    project.checklist_path("post_baseline").write_text(text)
    assert evaluate_gate(project, state, "baseline").passed
    assert entry_verdict(project, state, "optimization").allowed
    blocked = entry_verdict(project, state, "finalization")
    assert not blocked.allowed and "'optimize'" in blocked.reason and blocked.unblock.startswith("wf decide finalize")


def test_edited_evidence_fails_every_auto_item(project):
    state = load_state(project)
    _fake_baseline(project, state)
    path = project.evidence_dir / "baseline.json"
    raw = json.loads(path.read_text())
    raw["facts"]["status"] = "completed"
    raw["facts"]["best_train_loss"] = 0.01  # a hand edit
    path.write_text(json.dumps(raw))
    gate = evaluate_gate(project, state, "baseline")
    auto = [i for i in gate.items if i.kind == "auto"]
    assert all(not i.checked and "edited after it was recorded" in i.evidence for i in auto)


def test_hand_ticked_auto_item_does_not_count(project):
    state = load_state(project)
    path = project.checklist_path("reproducibility")
    path.write_text(path.read_text().replace("- [ ]", "- [x]"))
    gate = evaluate_gate(project, state, "setup")
    assert not gate.passed
    item = next(i for i in gate.items if i.id == "seeds_fixed")
    assert not item.checked and "ticked in the file, but the evidence does not support it" in item.evidence


def test_project_paths_cannot_escape(project):
    from mlflow_core.errors import UserInputError
    with pytest.raises(UserInputError):
        project.checklist_path("../../etc/passwd")
    with pytest.raises(UserInputError):
        project.inside("../outside")
    assert Project.find(project.root / "checklists").root == project.root.resolve()


@pytest.mark.parametrize("device, gpu, passed, fragment", [
    ("cpu", {"available": False, "reason": "no driver"}, True, "no GPU present"),
    ("cpu", {"available": True, "p50": 0.0, "mean": 0.0}, True, "trained on the CPU"),
    ("cuda", {"available": True, "p50": 85.0, "mean": 80.0}, True, "median 85 %"),
    ("cuda", {"available": True, "p50": 12.0, "mean": 20.0}, False, "resource_inefficiency"),
    ("cuda", {"available": True, "p50": None}, False, "no utilization samples"),
])
def test_gpu_utilization_check(project, device, gpu, passed, fragment):
    from mlflow_core.workflow.checks import CheckContext, run_check
    write_evidence(project, "baseline", None, _training_facts(device=device, gpu=gpu))
    ctx = CheckContext(project, load_state(project), "baseline", read_evidence(project, "baseline"),
                       {"min_percent": 60})
    result = run_check("gpu_utilization", ctx)
    assert result.passed is passed and fragment in result.detail


def test_status_suggests_resume_for_a_stopped_run_and_waits_for_a_live_one(tmp_path):
    from mlflow_core.workflow.lock import locked
    from mlflow_core.workflow.project import Project
    from mlflow_core.workflow.scaffold import init_project
    from mlflow_core.workflow.state import RunRecord, load_state, now_iso, save_state
    from mlflow_core.workflow.status import project_status

    project = init_project(tmp_path / "p")
    state = load_state(project)
    state.current_phase = "baseline"
    state.runs.append(RunRecord(run_id="baseline-1", phase="baseline", status="running", started_at=now_iso(),
                                dir="runs/baseline-1"))
    save_state(project, state)
    shown = project_status(project)
    assert shown["next"].startswith("wf phase baseline --resume")  # its process is gone
    assert shown["runs"][0]["status"] == "interrupted" and "process is gone" in shown["runs"][0]["summary"]["stopped"]
    assert load_state(project).runs[-1].status == "running"  # shown, not written: status writes nothing
    import os
    import socket

    state.runs[-1].pid, state.runs[-1].host = os.getpid(), socket.gethostname()  # a live run's command
    save_state(project, state)
    status_while_held = locked("wf phase baseline")(project_status)(Project(project.root))
    assert status_while_held["next"].startswith("wait: run baseline-1 is in progress")
    state.runs[-1].status = "interrupted"
    save_state(project, state)
    assert project_status(project)["next"].startswith("wf phase baseline --resume")
