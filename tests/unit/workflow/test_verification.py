"""The torch-free parts of gates that judge the truth of their claims: what a predictor that learned
nothing scores, the noise a learned model must stand out of, and the config a run of a phase trained."""

from __future__ import annotations

import math

from mlflow_core.workflow.noise import chance_level, mcc_beyond_chance
from mlflow_core.workflow.verification import PhaseVerification, expected_config


def test_chance_level_is_the_majority_share_and_the_prior_entropy():
    level = chance_level([30, 10, 0], "samples")
    assert level["count"] == 40 and level["majority_class"] == 0 and level["majority_share"] == 0.75
    assert math.isclose(level["prior_nll"], -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs_tol=1e-6)


def test_an_mcc_counts_only_beyond_two_standard_errors_of_chance():
    # the chance-level digits run (learning rate 1e6): MCC 0.032 over 359 validation samples
    assert not mcc_beyond_chance(0.032, 359).stands_out
    assert mcc_beyond_chance(0.997, 359).stands_out
    small = mcc_beyond_chance(0.5, 8)  # 8 samples: 2/sqrt(8) = 0.71 is the smallest MCC that shows learning
    assert not small.stands_out and math.isclose(small.smallest, 2 / math.sqrt(8))


def test_a_verification_passes_only_when_every_claim_is_verified():
    out = PhaseVerification("baseline", "b-1")
    assert not out.passed  # nothing recomputed is no pass
    out.add("data", "verified", "hashed again")
    assert out.passed
    out.add("training (replay)", "unverifiable", "no kept states")
    assert not out.passed and out.to_json()["claims"][1]["status"] == "unverifiable"


def test_the_config_a_run_trained_fits_a_curriculum_to_its_epochs():
    stages = [{"epochs": 6, "image_size": 128}, {"epochs": 4, "image_size": 224}]
    recorded = {"training.epochs": 10, "reproducibility.seed": 42, "curriculum.stages": stages}
    trial = expected_config(recorded, {"training.epochs": 5, "training.learning_rate": 0.01})
    assert trial["training.learning_rate"] == 0.01 and trial["reproducibility.seed"] == 42
    assert sum(stage["epochs"] for stage in trial["curriculum.stages"]) == 5
    assert expected_config(recorded, {"reproducibility.seed": 43})["curriculum.stages"] == stages
