import math

import pytest

from mlflow_core.monitoring.anomalies import (
    EarlyStopping,
    GradExplosionDetector,
    StallDetector,
    Verdict,
    first_nonfinite,
)


@pytest.mark.parametrize("values, expected", [
    ([1.0, 2.0, 3.0], None),
    ([1.0, float("nan"), 3.0], 1),
    ([float("inf")], 0),
    ([1.0, 2.0, -float("inf"), float("nan")], 2),
])
def test_first_nonfinite(values, expected):
    assert first_nonfinite(values) == expected


@pytest.mark.parametrize("losses, window, flagged_at", [
    ([2.0, 1.5, 1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01], 5, None),   # learning
    ([2.0] * 12, 5, 5),                                                          # flat from the start
    ([2.0, 1.0, 0.5] + [0.5] * 10, 5, 7),                                        # flat after learning
    ([2.0, 1.999, 1.998, 1.997, 1.996, 1.995, 1.994], 5, 5),                     # below min_delta
])
def test_stall_detector(losses, window, flagged_at):
    det = StallDetector(window=window, min_delta=0.01)
    found = [f.step for step, loss in enumerate(losses) if (f := det.update(step, loss))]
    assert found == ([] if flagged_at is None else [flagged_at])


def test_explosion_detector_flags_spike_after_warmup():
    det = GradExplosionDetector(factor=10.0, warmup=5)
    norms = [1.0, 1.1, 0.9, 1.0, 1.05, 1.0, 50.0, 1.0]
    found = [(s, f.verdict) for s, n in enumerate(norms) if (f := det.update(s, n))]
    assert found == [(6, Verdict.EXPLODING)]
    # near convergence: a tiny median with earlier noise of the same size is not an explosion
    calm = GradExplosionDetector(factor=10.0, warmup=5)
    noisy = [0.1, 0.12, 2.5, 0.1, 0.11, 0.1, 0.09, 3.0, 0.1]
    assert [s for s, n in enumerate(noisy) if calm.update(s, n)] == []
    assert det.update(8, float("nan")).verdict == Verdict.NONFINITE


@pytest.mark.parametrize("mode, values, stop_epoch", [
    ("min", [1.0, 0.9, 0.8, 0.7], None),
    ("min", [1.0, 0.9, 0.9, 0.9995, 0.95], 5),
    ("max", [0.5, 0.6, 0.6, 0.6005, 0.59], 5),
])
def test_early_stopping(mode, values, stop_epoch):
    es = EarlyStopping(mode, patience=3, min_delta=0.001)
    stops = [epoch for epoch, v in enumerate(values, 1) if es.update(epoch, v)[1]]
    assert stops == ([] if stop_epoch is None else [stop_epoch])


def test_state_dicts_round_trip():
    stall = StallDetector(5, 0.01)
    for s, v in enumerate([3.0, 2.0, 2.0]):
        stall.update(s, v)
    restored = StallDetector(5, 0.01)
    restored.load_state_dict(stall.state_dict())
    assert restored.state_dict() == stall.state_dict()
    # after restore both flag at the same step
    assert [restored.update(s, 2.0) is not None for s in range(3, 8)] == [stall.update(s, 2.0) is not None
                                                                          for s in range(3, 8)]
    es = EarlyStopping("max", 2, 0.0)
    es.update(1, 0.5)
    es2 = EarlyStopping("max", 2, 0.0)
    es2.load_state_dict(es.state_dict())
    assert es2.update(2, 0.4) == es.update(2, 0.4)
    explode = GradExplosionDetector(10.0, warmup=2)
    for s, n in enumerate([1.0, 1.0, 1.0]):
        explode.update(s, n)
    e2 = GradExplosionDetector(10.0, warmup=2)
    e2.load_state_dict(explode.state_dict())
    assert e2.update(3, 20.0) is not None and explode.update(3, 20.0) is not None
    # fields added later default sensibly
    fresh = StallDetector(5, 0.01)
    fresh.load_state_dict({})
    assert fresh.best == math.inf

