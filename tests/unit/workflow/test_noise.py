"""How much of a measured effect sampling noise explains (workflow/noise.py)."""

import pytest


def _epochs(train: float, mccs: list[float]) -> list[dict]:
    return [{"epoch": i, "train_accuracy": train, "val_accuracy": 0.25 + m / 2, "val_mcc": m}
            for i, m in enumerate(mccs, 1)]


CHANCE_48 = {"units": "samples", "count": 48, "majority_class": 0, "majority_share": 0.25, "prior_nll": 1.386}


@pytest.mark.parametrize("train, mccs, fires", [
    (1.0, [0.0, 0.0, 0.05, 0.1, 0.0], True),     # fitted, validation MCC within 2/sqrt(48) = 0.29 of 0
    (1.0, [0.0, 0.0, 0.0, 0.0, 0.6], False),     # the last epoch learned: above chance
    (0.6, [0.0, 0.0, 0.0, 0.0, 0.0], False),     # training not fitted either: a stall, not this
    (1.0, [0.0], False),                          # one validated epoch is no trend
])
def test_validation_at_chance_while_training_fits(train, mccs, fires):
    from mlflow_core.workflow.noise import validation_at_chance

    found = validation_at_chance(_epochs(train, mccs), CHANCE_48)
    assert (found is not None) == fires
    if fires:
        assert found["kind"] == "validation_at_chance" and found["epoch"] == len(mccs)
        assert "within 0.289 of 0, the noise of 48 samples" in found["message"]
    assert validation_at_chance(_epochs(train, mccs), None) is None  # no chance level recorded: nothing judged
