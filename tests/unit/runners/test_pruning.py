"""The sweep's pruner: it stops a trial only on evidence (after its warm-up, once enough trials have
completed, and when worse than their median by more than the validation set's sampling noise)."""

import math

import pytest

from mlflow_core.config import load_config_text
from mlflow_core.runners.pruning import PruningRule, build_pruner, pruned_at, pruning_rule

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _rule(**over):
    base = dict(warmup_epochs=2, startup_trials=3, min_delta=None, metric="val_accuracy", val_size=360,
                maximize=True)
    return PruningRule(**{**base, **over})


def _study(rule, completed_curves):
    """A study whose completed trials reported these per-epoch values."""
    pruner = build_pruner(optuna, rule)
    study = optuna.create_study(direction="maximize" if rule.maximize else "minimize", pruner=pruner)
    for curve in completed_curves:
        trial = study.ask()
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
        study.tell(trial, max(curve) if rule.maximize else min(curve))
    return study, pruner


def _judged(study, curve):
    trial = study.ask()
    for epoch, value in enumerate(curve, start=1):
        trial.report(value, epoch)
    return trial.should_prune(), trial.number


PEERS = [[0.90, 0.9917, 0.9944], [0.91, 0.9944, 0.9972], [0.89, 0.9972, 0.9972]]  # medians 0.9944 at epoch 2


def test_a_tie_with_the_median_is_not_pruned():
    study, _ = _study(_rule(), PEERS)
    assert _judged(study, [0.90, 0.9944]) == (False, 3)


def test_a_gap_within_the_sampling_noise_is_not_pruned_and_one_beyond_it_is():
    rule = _rule()
    study, pruner = _study(rule, PEERS)
    # one sample of 360 below the median: well inside the noise of 360 validation samples
    assert _judged(study, [0.90, 0.9917])[0] is False
    pruned, number = _judged(study, [0.80, 0.95])
    assert pruned is True
    verdict = pruner.verdicts[number]
    assert verdict.median == pytest.approx(0.9944) and verdict.completed == 3
    assert verdict.margin == pytest.approx(math.sqrt(2 * 0.9944 * 0.0056 / 360))


def test_no_pruning_before_the_warm_up_epoch_or_before_enough_trials_completed():
    study, _ = _study(_rule(warmup_epochs=3), PEERS)
    assert _judged(study, [0.10, 0.10])[0] is False  # epoch 2 < warm-up 3
    assert _judged(study, [0.10, 0.10, 0.10])[0] is True
    study, _ = _study(_rule(startup_trials=4), PEERS)
    assert _judged(study, [0.10, 0.10, 0.10])[0] is False  # 3 completed < 4


def test_the_margin_is_at_least_one_validation_sample():
    assert _rule().margin(1.0) == pytest.approx(1 / 360)
    assert _rule(val_size=20).margin(0.5) == pytest.approx(math.sqrt(2 * 0.25 / 20))
    assert _rule(metric="val_mcc").margin(0.0) == pytest.approx(2 * math.sqrt(2 * 0.25 / 360))


def test_a_loss_is_pruned_when_strictly_worse_unless_a_margin_is_configured():
    losses = [[1.0, 0.50], [1.0, 0.40], [1.0, 0.60]]
    study, _ = _study(_rule(metric="val_loss", maximize=False), losses)
    assert _judged(study, [1.0, 0.50])[0] is False  # equal to the median
    assert _judged(study, [1.0, 0.51])[0] is True
    study, _ = _study(_rule(metric="val_loss", maximize=False, min_delta=0.05), losses)
    assert _judged(study, [1.0, 0.54])[0] is False
    assert "optimization.pruner_min_delta" in _rule(metric="val_loss").describe()


def test_the_defaults_grow_with_the_budget():
    cfg = load_config_text("project: {name: p}\noptimization: {n_trials: 12}\n", "t")
    rule = pruning_rule(cfg.optimization, 20, "val_accuracy", 360, True)
    assert (rule.warmup_epochs, rule.startup_trials) == (10, 4)
    cfg = load_config_text("project: {name: p}\noptimization: {n_trials: 30, pruner_warmup_epochs: 2, "
                           "pruner_startup_trials: 5}\n", "t")
    rule = pruning_rule(cfg.optimization, 5, "val_accuracy", 360, True)
    assert (rule.warmup_epochs, rule.startup_trials) == (2, 5)
    assert "from epoch 2 on, once 5 trials have completed" in rule.describe()
    assert pruning_rule(load_config_text("project: {name: p}\noptimization: {n_trials: 3}\n", "t").optimization,
                        1, "val_accuracy", 360, True).warmup_epochs == 1


def test_pruned_trials_are_counted_by_the_epoch_they_stopped_after():
    rows = [{"state": "PRUNED", "epochs": 3}, {"state": "PRUNED", "epochs": 3}, {"state": "PRUNED", "epochs": 5},
            {"state": "COMPLETE", "epochs": 10}]
    assert pruned_at(rows) == {"3": 2, "5": 1}
