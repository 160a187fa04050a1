"""The fair comparison and the study's bookkeeping, on hand-written numbers."""

import pytest

from mlflow_core.runners.optimization import compare
from mlflow_core.runners.study import redacted, study_name


@pytest.mark.parametrize("baseline, optimized, maximize, significant", [
    ([0.90, 0.91, 0.92], [0.95, 0.96, 0.955], True, True),      # clear gain, small noise
    ([0.90, 0.95, 0.85], [0.92, 0.97, 0.87], True, False),      # gain within the seed noise
    ([0.90, 0.91, 0.92], [0.85, 0.86, 0.87], True, False),      # worse
    ([0.50, 0.52, 0.51], [0.40, 0.41, 0.42], False, True),      # val_loss: lower is better
    ([0.9, 0.9], [0.9, 0.9], True, False),                      # identical, no noise: no gain
    ([0.9, 0.9], [0.95, 0.95], True, True),                     # no noise at all: any gain is real
    ([0.9, float("nan")], [0.95, 0.96], True, False),           # too few finite runs
])
def test_compare(baseline, optimized, maximize, significant):
    out = compare(baseline, optimized, [1, 2, 3][: len(baseline)], maximize, 0.05, "m")
    assert out["significant"] is significant
    assert out["verdict"]


def test_redacted_hides_passwords_only():
    assert redacted("postgresql://wf:s3cret@db.lab:5432/optuna") == "postgresql://wf:***@db.lab:5432/optuna"
    assert redacted("sqlite:///.wf/optuna.db") == "sqlite:///.wf/optuna.db"


def test_study_name_follows_the_search_space():
    from mlflow_core.config import load_config_text

    a = load_config_text("project: {name: p}\n", "t")
    b = load_config_text("project: {name: p}\noptimization:\n  search_space:\n"
                         "    training.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}\n", "t")
    assert study_name(a) == study_name(a) and study_name(a) != study_name(b)
    assert study_name(a).startswith("p-")


def test_parameter_importance_ranks_the_parameter_that_matters_and_declines_with_too_few_trials():
    optuna = pytest.importorskip("optuna")
    from mlflow_core.runners.study import importance as _importance

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_float("noise", 0.0, 1.0)  # has no effect
        return (lr - 0.01) ** 2

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=40)
    ranked = _importance(optuna, study)
    assert ranked is not None and ranked["lr"] > ranked["noise"]
    few = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    few.optimize(objective, n_trials=2)
    assert _importance(optuna, few) is None  # no ranking (and no warning) from two trials


def _ctx(tmp_path, n_trials):
    from mlflow_core.config import load_config_text
    from mlflow_core.runners import RunContext
    from mlflow_core.workflow.scaffold import init_project

    project = init_project(tmp_path / "p")
    cfg = load_config_text(f"project: {{name: p}}\noptimization: {{n_trials: {n_trials}}}\n", "t")
    return RunContext(project, cfg, "sha", "run", project.runs_dir / "run")


def _objective(trial):
    import math
    import time

    time.sleep(0.02)
    if trial.number == 1:
        trial.set_user_attr("status", "failed_nan")  # a NaN run: failed on its own, it holds its slot
        return math.nan
    return float(trial.number)


def _worker(project_root, n_trials, out):
    import optuna

    from mlflow_core.config import load_config_text
    from mlflow_core.runners import RunContext
    from mlflow_core.runners.study import run_trials
    from mlflow_core.workflow.project import Project

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    project = Project(project_root)
    cfg = load_config_text(f"project: {{name: p}}\noptimization: {{n_trials: {n_trials}}}\n", "t")
    ctx = RunContext(project, cfg, "sha", "run", project.runs_dir / "run")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{project_root / '.wf' / 'optuna.db'}")
    out.put(run_trials(optuna, ctx, study, _objective))


def test_workers_claim_trials_one_at_a_time_up_to_the_budget(tmp_path):
    """Three processes on one SQLite study of 7 trials: 7 trials in all, none run twice."""
    import multiprocessing

    optuna = pytest.importorskip("optuna")
    ctx = _ctx(tmp_path, 7)
    optuna.create_study(study_name="s", storage=f"sqlite:///{ctx.project.root / '.wf' / 'optuna.db'}")
    spawn = multiprocessing.get_context("spawn")
    out = spawn.Queue()
    workers = [spawn.Process(target=_worker, args=(ctx.project.root, 7, out)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    ran = sorted(out.get(timeout=5) for _ in workers)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{ctx.project.root / '.wf' / 'optuna.db'}")
    assert sum(ran) == 7 and len(study.trials) == 7
    assert [t.state.name for t in study.trials].count("FAIL") == 1  # trial 1's NaN, which holds its slot


def test_an_interrupted_trial_is_failed_quietly_and_the_interruption_goes_on(tmp_path, caplog):
    """Ctrl-C in a trial: wf says it stopped and how to resume; Optuna logs nothing before it."""
    import logging

    optuna = pytest.importorskip("optuna")
    from mlflow_core.runners import SubRunInterrupted
    from mlflow_core.runners.study import run_trials

    ctx = _ctx(tmp_path, 3)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{ctx.project.root / '.wf' / 'optuna.db'}")

    def stopped(trial):
        raise SubRunInterrupted(2, None, ctx.run_dir / "trials" / "trial_000")

    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(SubRunInterrupted):
            run_trials(optuna, ctx, study, stopped)
    finally:
        optuna.logging.disable_propagation()
    assert not [r for r in caplog.records if r.name.startswith("optuna")]
    assert [t.state.name for t in study.trials] == ["FAIL"]


def test_a_journal_file_holds_a_study_for_workers_on_a_shared_file_system(tmp_path):
    optuna = pytest.importorskip("optuna")
    from mlflow_core.runners.trial_slots import lock_file_for, open_storage

    storage = open_storage(optuna, "journal:.wf/optuna.journal", tmp_path)
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = optuna.load_study(study_name="s", storage=open_storage(optuna, "journal:.wf/optuna.journal", tmp_path))
    assert len(again.trials) == 2 and (tmp_path / ".wf" / "optuna.journal").is_file()
    assert lock_file_for("journal:.wf/optuna.journal", tmp_path) == tmp_path / ".wf" / "optuna.journal.claim.lock"
    assert lock_file_for(f"sqlite:///{tmp_path}/.wf/optuna.db", tmp_path) == tmp_path / ".wf" / "optuna.db.claim.lock"
    assert lock_file_for("mysql://db/x", tmp_path) == tmp_path / ".wf" / "optuna.claim.lock"


def test_postgresql_without_its_driver_names_the_extra_that_brings_it(tmp_path):
    """Optuna alone would say "Failed to import DB access module"."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['psycopg'] = None\n"
            "import optuna\nfrom pathlib import Path\nfrom mlflow_core.runners.trial_slots import open_storage\n"
            "from mlflow_core.errors import UserInputError\n"
            "try:\n    open_storage(optuna, 'postgresql://wf:secret@db.lab/optuna', Path('.'))\n"
            "except UserInputError as e:\n    print(e.message, e.hint)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "PostgreSQL needs the psycopg driver" in out.stdout and "pip install 'wf-phases[postgres]'" in out.stdout
    assert "secret" not in out.stdout
