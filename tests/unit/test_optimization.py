"""The fair comparison and the study's bookkeeping, on hand-written numbers."""

import pytest

from mlflow_core.runners.optimization import compare, redacted, study_name


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
    from mlflow_core.runners.optimization import _importance

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


def test_optuna_says_nothing_of_a_trial_that_a_signal_stopped(caplog):
    """Ctrl-C in a trial: wf says it stopped and how to resume; Optuna's "Trial N failed …
    Traceback … SubRunInterrupted" is not shown before it. Other failures are still logged."""
    import logging
    from pathlib import Path

    optuna = pytest.importorskip("optuna")
    from mlflow_core.runners import SubRunInterrupted
    from mlflow_core.runners.optimization import QuietAboutInterruptions

    log, quiet = logging.getLogger("optuna.study._optimize"), QuietAboutInterruptions()
    log.addFilter(quiet)
    optuna.logging.enable_propagation()
    try:
        study = optuna.create_study()

        def stopped(trial):
            raise SubRunInterrupted(2, None, Path("runs/x/trials/trial_000"))

        def broken(trial):
            raise ValueError("a real failure")

        with caplog.at_level(logging.WARNING), pytest.raises(SubRunInterrupted):
            study.optimize(stopped, n_trials=1)
        assert not [r for r in caplog.records if "failed" in r.getMessage()]
        with caplog.at_level(logging.WARNING), pytest.raises(ValueError):
            study.optimize(broken, n_trials=1)
        assert any("a real failure" in r.getMessage() for r in caplog.records)
    finally:
        optuna.logging.disable_propagation()
        log.removeFilter(quiet)
