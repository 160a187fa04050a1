"""Phase facts are written from, and read into, the phase's model (workflow/facts.py)."""

import json

import pytest
from pydantic import ValidationError

from mlflow_core.workflow.checks import CheckContext, run_check
from mlflow_core.workflow.evidence import canonical_sha256, read_evidence, write_evidence
from mlflow_core.workflow.facts import SetupFacts, TrainingFacts
from mlflow_core.workflow.scaffold import init_project
from mlflow_core.workflow.state import load_state

BASELINE = {
    "run_dir": "runs/b1", "device": "cpu", "status": "completed", "stop_reason": None, "epochs_completed": 2,
    "steps": 20, "duration_s": 1.5, "first_epoch_train_loss": 2.0, "best_train_loss": 0.5,
    "best": {"metric": "val_accuracy", "value": 0.9, "epoch": 2}, "target": None, "nonfinite": None,
    "anomalies": [], "checkpoints": {"best": {"path": "runs/b1/checkpoints/best_model.pt", "epoch": 2, "step": 20,
                                              "sha256": "ab" * 32}},
    "gpu": {"available": False, "reason": "no NVIDIA driver"}, "data_wait_fraction": 0.1,
    "metrics": {"path": "runs/b1/logs/metrics.json", "sha256": "cd" * 32},
}


@pytest.fixture
def project(tmp_path):
    return init_project(tmp_path / "p")


def test_a_key_the_model_does_not_declare_fails_where_it_is_written():
    with pytest.raises(ValidationError, match="gpu_utilisation"):
        TrainingFacts.model_validate({**BASELINE, "gpu_utilisation": 80})
    with pytest.raises(ValidationError, match="epochs_completed"):
        TrainingFacts.model_validate({**BASELINE, "epochs_completed": "two"})


def test_a_phase_records_its_own_model_only(project):
    with pytest.raises(TypeError, match="setup records SetupFacts, not TrainingFacts"):
        write_evidence(project, "setup", "s1", TrainingFacts.model_validate(BASELINE))


def test_facts_round_trip_with_absent_keys_left_absent(project):
    write_evidence(project, "baseline", "b1", TrainingFacts.model_validate(BASELINE))
    evidence = read_evidence(project, "baseline")
    assert evidence.intact and isinstance(evidence.facts, TrainingFacts)
    assert evidence.facts.checkpoints.best.epoch == 2 and evidence.facts.gpu.reason == "no NVIDIA driver"
    stored = json.loads((project.evidence_dir / "baseline.json").read_text())["facts"]
    assert evidence.facts.to_json() == stored
    assert "report" not in stored and "fingerprints" not in stored  # never set: not written as null


def test_intact_evidence_another_wf_wrote_names_the_field_and_the_command(project):
    """A file whose hash matches but whose facts are not this wf's model (a newer or older wf wrote
    it): the checks fail naming the field, and the command that records it anew."""
    write_evidence(project, "baseline", "b1", TrainingFacts.model_validate(BASELINE))
    path = project.evidence_dir / "baseline.json"
    raw = json.loads(path.read_text())
    raw["facts"]["steps"] = "twenty"
    raw["sha256"] = canonical_sha256({"phase": raw["phase"], "run_id": raw["run_id"], "facts": raw["facts"]})
    path.write_text(json.dumps(raw))
    evidence = read_evidence(project, "baseline")
    assert not evidence.intact and evidence.facts is None
    result = run_check("no_nan_loss", CheckContext(project, load_state(project), "baseline", evidence))
    assert not result.passed
    assert "field facts.steps" in result.detail and "`wf phase baseline`" in result.detail
    assert "edited after it was recorded" not in result.detail  # its hash is fine: it is another version's file


def test_every_phase_names_a_facts_model():
    from mlflow_core.workflow.phases import PHASES
    assert PHASES["setup"].facts is SetupFacts and PHASES["baseline"].facts is TrainingFacts
    assert all(kind.facts.__name__.endswith("Facts") for kind in PHASES.values())


@pytest.mark.parametrize("target, choice, said", [(0.97, "finalize", True), (0.85, "finalize", False),
                                                  (0.97, "optimize", False)])
def test_the_model_card_says_when_a_baseline_below_its_target_was_finalized(project, target, choice, said):
    from mlflow_core.config.schema import WorkflowConfig
    from mlflow_core.reports.phase_reports import _finalized_below_target
    from mlflow_core.workflow.state import Decision, save_state

    write_evidence(project, "baseline", "b1", TrainingFacts.model_validate({**BASELINE, "target": target}))
    state = load_state(project)
    state.decision = Decision(phase="baseline", choice=choice, next_phase="finalization", time="t",
                              after_run="b1", reason="good enough for the demo")
    save_state(project, state)
    cfg = WorkflowConfig.model_validate({"validation": {"metric": "val_accuracy"}})  # mode: max, derived
    note = _finalized_below_target(project, load_state(project), cfg)
    assert (note == "The baseline missed its target (val_accuracy 90.0 %, validation.target 97.0 %), and the decision "
            "after it was to finalize anyway: “good enough for the demo”.") if said else note is None


@pytest.mark.parametrize("train, val, playbook", [
    (0.99, 0.80, "overfitting"), (0.81, 0.80, "underfitting"),
    (0.90, 0.80, "underfitting"),  # a 10-point gap on 20 validation samples is within their noise
])
def test_a_missed_target_points_to_the_playbook_the_evidence_names(train, val, playbook):
    """A baseline that learns but misses its target: a generalization gap is not a stall."""
    from mlflow_core.workflow.recommend import recommend
    from tests.helpers import run_metrics

    metrics = run_metrics(metric="val_accuracy", mode="max", target=0.97,
                          best={"metric": "val_accuracy", "value": val, "epoch": 2},
                          epochs=[{"train_accuracy": 0.6, "val_accuracy": 0.6},
                                  {"train_accuracy": train, "val_accuracy": val}])
    rec = recommend(metrics, [{"id": "loss_decreased", "passed": True}], {})
    assert rec.verdict == "insufficient" and rec.playbook == f"diagnostics/{playbook}.md"
    assert f"train accuracy {train:.1%}" in rec.reason
    if train - val > 0.05 and playbook == "underfitting":
        assert "within the noise of 20 validation samples" in rec.reason


def _final_facts(correct: int, samples: int, recall: float = 1.0):
    from mlflow_core.workflow.facts import FinalizationFacts

    accuracy = correct / samples
    return FinalizationFacts.model_validate({
        "run_dir": "runs/f1", "epochs": 3, "config_sha256": "ab" * 32, "config": {},
        "seeds": [{"seed": 42, "status": "completed", "test": {"accuracy": accuracy, "per_class": [
            {"class": 0, "precision": 1.0, "recall": recall, "f1": 0.9, "support": samples // 2},
            {"class": 1, "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": samples // 2}]}}],
        "test_split": {"samples": samples, "source": "test/", "evaluated_before_by": []},
        "data": {"train": 100, "val": 20, "test": samples, "num_classes": 2, "input_shape": [1, 8, 8],
                 "normalization": None, "class_names": ["cat", "dog"]},
        "optimized_config_matches": None,
        "summary": {"accuracy": {"mean": accuracy, "std": 0.0, "values": [accuracy]}}})


@pytest.mark.parametrize("correct, interval", [(48, "92.6 % to 100.0 %"), (0, "0.0 % to 7.4 %"),
                                               (24, "36.4 % to 63.6 %")])
def test_the_model_card_gives_the_wilson_interval_that_holds_at_the_edges(correct, interval):
    """48 of 48 correct is not '±0.000': the error rate can still be about 7 % (rule of three)."""
    from mlflow_core.reports.phase_reports import limitations

    said = limitations(_final_facts(correct, 48), None)
    assert (f"The test split has 48 samples ({correct} of 48 correct): the accuracy's 95 % Wilson score interval "
            f"is {interval}.") in said


def test_the_model_card_compares_the_test_metric_with_the_target_and_names_weak_classes():
    from mlflow_core.config.schema import WorkflowConfig
    from mlflow_core.reports.phase_reports import class_namer, limitations, test_against_target

    facts = _final_facts(41, 48, recall=0.7)
    missed = test_against_target(facts, WorkflowConfig.model_validate(
        {"validation": {"metric": "val_accuracy", "target": 0.9}}))
    assert missed == {"metric": "val_accuracy", "label": "accuracy", "target": "90.0 %", "value": "85.4 %",
                      "met": False}
    said = limitations(facts, facts.evaluated()[0].model_dump(mode="json"), None, missed, class_namer(["cat", "dog"]))
    assert said[0] == "The test accuracy (85.4 %) is below the project's target (validation.target: val_accuracy 90.0 %)."
    assert "Classes with recall below 0.8: cat (0): 0.70." in said
    met = test_against_target(facts, WorkflowConfig.model_validate({"validation": {"metric": "val_accuracy",
                                                                                    "target": 0.8}}))
    assert met["met"] and not any("below the project's target" in line
                                  for line in limitations(facts, None, None, met))
    assert test_against_target(facts, WorkflowConfig.model_validate({"validation": {"metric": "val_loss",
                                                                                     "target": 0.3}})) is None
