"""`wf phase NAME --smoke`: the whole pipeline of a phase, two training and two validation steps
per run, recording nothing in the project."""

from __future__ import annotations

import hashlib

import pytest

pytest.importorskip("torch")


def _snapshot(root):
    """Every file of the project and its content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("phase", ["setup", "baseline", "optimization", "finalization"])
def test_smoke_runs_the_phase_and_records_nothing(wf, tmp_path, phase):
    assert wf("init", "p", cwd=tmp_path).code == 0
    root = tmp_path / "p"
    before = _snapshot(root)
    r = wf("phase", phase, "--smoke", cwd=root)
    assert r.code == 0, r.out[-3000:] + r.err
    assert "nothing recorded" in r.out
    if phase != "setup":
        assert "completed │ 2 " in r.out  # a training run of two steps
    assert _snapshot(root) == before  # no state, evidence, report, checkpoint or export in the project


def test_smoke_of_a_config_that_does_not_train_cleanly_exits_1(wf, tmp_path):
    from mlflow_core.workflow.scaffold import set_yaml_value

    assert wf("init", "p", cwd=tmp_path).code == 0
    config = tmp_path / "p" / "training_config.yaml"
    text = config.read_text()
    for key, value in (("training.optimizer", "sgd"), ("training.learning_rate", "1.0e12"),
                       ("model.batch_norm", "false")):
        text = set_yaml_value(text, key, value)
    config.write_text(text)
    r = wf("phase", "baseline", "--smoke", cwd=tmp_path / "p")
    assert r.code == 1 and "failed_nan" in r.out


def test_smoke_works_while_another_command_holds_the_project(wf, tmp_path):
    from mlflow_core.workflow.project import Project
    from mlflow_core.workflow.state import project_lock

    assert wf("init", "p", cwd=tmp_path).code == 0
    with project_lock(Project(tmp_path / "p"), "wf phase baseline"):
        busy = wf("phase", "baseline", cwd=tmp_path / "p")
        smoke = wf("phase", "baseline", "--smoke", cwd=tmp_path / "p")
    assert busy.code == 4 and smoke.code == 0


def test_smoke_says_which_phases_it_takes(wf, tmp_path):
    assert wf("init", "p", cwd=tmp_path).code == 0
    r = wf("phase", "diagnostics", "--smoke", cwd=tmp_path / "p")
    assert r.code == 2 and "wf diagnose auto" in r.err
    r = wf("phase", "baseline", "--smoke", "--resume", cwd=tmp_path / "p")
    assert r.code == 2 and "--smoke" in r.err
