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
    from mlflow_core.workflow.lock import locked
    from mlflow_core.workflow.project import Project

    assert wf("init", "p", cwd=tmp_path).code == 0

    @locked("wf phase baseline")
    def while_held(_project):
        return wf("phase", "baseline", cwd=tmp_path / "p"), wf("phase", "baseline", "--smoke", cwd=tmp_path / "p")
    busy, smoke = while_held(Project(tmp_path / "p"))
    assert busy.code == 4 and smoke.code == 0


def test_smoke_says_which_phases_it_takes(wf, tmp_path):
    assert wf("init", "p", cwd=tmp_path).code == 0
    r = wf("phase", "diagnostics", "--smoke", cwd=tmp_path / "p")
    assert r.code == 2 and "wf diagnose auto" in r.err
    r = wf("phase", "baseline", "--smoke", "--resume", cwd=tmp_path / "p")
    assert r.code == 2 and "--smoke" in r.err


def test_smoke_in_bf16_trains_what_the_cpu_computes_natively_and_says_why(wf, tmp_path):
    """On a CPU without native bf16, autocast emulates it 10-25× slower than fp32: a smoke run says so
    and trains in fp32; on a CPU with it, bf16 runs as configured and nothing is said."""
    import json

    from mlflow_core.environment import cpu_precision_support, measure_autocast_slowdown
    from mlflow_core.training.precision import EMULATED_SLOWDOWN
    from mlflow_core.workflow.scaffold import set_yaml_value

    assert wf("init", "p", cwd=tmp_path).code == 0
    root = tmp_path / "p"
    config = root / "training_config.yaml"
    config.write_text(set_yaml_value(config.read_text(), "training.precision", "bf16"))
    emulated = measure_autocast_slowdown("bf16") >= EMULATED_SLOWDOWN  # what the CPU's kernels do, measured
    r = wf("phase", "baseline", "--smoke", cwd=root)
    assert r.code == 0, r.out[-3000:] + r.err
    says = "training.precision bf16 on a CPU" in r.out
    assert says == emulated
    if emulated:
        assert "This short check trains in fp32 instead" in r.out
    row = next(line for line in r.out.splitlines() if "completed │" in line)
    assert row.rstrip(" │").endswith("fp32" if emulated else "bf16")
    assert "precision: bf16" in config.read_text()  # the config is the user's: never rewritten

    assert wf("phase", "setup", cwd=root).code == 0  # setup records what the CPU computes natively
    env = json.loads((root / "reports" / "environment.json").read_text())
    assert env["cpu_native_precision"]["bf16"] == cpu_precision_support()["bf16"]
    assert "CPU mixed precision" in (root / "reports" / "environment.md").read_text()
