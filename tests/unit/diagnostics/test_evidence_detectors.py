"""Evidence detectors on hand-written facts and epoch tables: the behaviour is readable here."""

from pathlib import Path

import pytest

from mlflow_core.diagnostics.bad_initialization import bad_initialization
from mlflow_core.diagnostics.class_imbalance import class_imbalance
from mlflow_core.diagnostics.context import DiagnoseContext
from mlflow_core.diagnostics.data_leakage import data_leakage
from mlflow_core.diagnostics.exploding_gradients import exploding_gradients
from mlflow_core.diagnostics.input_scaling import input_scaling
from mlflow_core.diagnostics.overfitting import overfitting
from mlflow_core.diagnostics.resource_inefficiency import resource_inefficiency
from mlflow_core.workflow.facts import DataCheck
from mlflow_core.workflow.state import RunRecord
from tests.helpers import run_metrics

RUN = RunRecord(run_id="r1", phase="baseline", status="completed", started_at="t", dir="runs/r1")
DATA = {"train_size": 1000, "val_size": 200, "num_classes": 3, "overlap_train_val": 0, "imbalance_ratio": 1.2,
        "class_counts_train": {"0": 340, "1": 330, "2": 330}, "input_min": 0.0, "input_max": 1.0}
# what setup records besides the figures the detectors read (workflow/facts.py: DataCheck)
SCANNED = {"source": "test", "test_size": 0, "input_shape": [1, 8, 8], "batch_shape": [32, 1, 8, 8],
           "input_dtype": "float32", "label_dtype": "int64", "class_counts_val": {}, "overlaps": {},
           "class_names": None, "scanned": {"train": 1000, "val": 200}, "problems": [], "warnings": []}


def ctx(data=None, epochs=None):
    return DiagnoseContext(Path("."), RUN, Path("."), run_metrics(epochs=epochs or []),
                           DataCheck(**{**SCANNED, **DATA, **(data or {})}) if data is not None else None)


def causes(diagnosis):
    return [(f.cause, f.confidence) for f in diagnosis.findings]


@pytest.mark.parametrize("overlap, expected", [(0, []), (1, [("train_val_overlap", 0.7)]),
                                               (10, [("train_val_overlap", 0.95)])])
def test_data_leakage(overlap, expected):
    assert causes(data_leakage(ctx({"overlap_train_val": overlap}))) == expected


@pytest.mark.parametrize("counts, ratio, expected", [
    ({"0": 340, "1": 330, "2": 330}, 1.03, []),
    ({"0": 600, "1": 200, "2": 200}, 3.0, [("skewed_classes", 0.6)]),
    ({"0": 900, "1": 90, "2": 10}, 90.0, [("skewed_classes", 0.9)]),
    ({"0": 900, "1": 100}, 9.0, [("missing_classes", 0.95)]),
    # 10 samples over 3 classes: 6/2/2 is what chance gives a balanced source, not a skew
    ({"0": 6, "1": 2, "2": 2}, 3.0, []),
])
def test_class_imbalance(counts, ratio, expected):
    assert causes(class_imbalance(ctx({"class_counts_train": counts, "imbalance_ratio": ratio}))) == expected


@pytest.mark.parametrize("lo, hi, expected", [(0.0, 1.0, []), (-3.0, 4.0, []), (0.0, 255.0, [("unnormalized_inputs", 0.75)]),
                                              (0.0, 10000.0, [("unnormalized_inputs", 0.9)])])
def test_input_scaling(lo, hi, expected):
    assert causes(input_scaling(ctx({"input_min": lo, "input_max": hi}))) == expected


def _epochs(val_losses, train_losses, train_acc, val_acc):
    return [{"epoch": i + 1, "val_loss": v, "train_loss": t, "train_accuracy": train_acc, "val_accuracy": val_acc}
            for i, (v, t) in enumerate(zip(val_losses, train_losses))]


@pytest.mark.parametrize("val, train, tacc, vacc, expected", [
    ([1.0, 0.8, 0.6, 0.5], [1.0, 0.7, 0.5, 0.4], 0.9, 0.88, []),                           # still improving
    ([1.0, 0.5, 0.6, 0.8], [1.0, 0.5, 0.2, 0.05], 0.99, 0.70, [("overfitting", 0.85)]),   # classic
    ([1.0, 0.5, 0.53, 0.54], [1.0, 0.5, 0.3, 0.2], 0.95, 0.85, []),                        # rise below 10 %
    ([1.0, 0.5, 0.6, 0.6], [1.0, 0.5, 0.4, 0.35], 0.86, 0.84, []),                         # no accuracy gap
    ([1.0, 0.5], [1.0, 0.4], 0.99, 0.5, []),                                               # too few epochs
])
def test_overfitting(val, train, tacc, vacc, expected):
    assert causes(overfitting(ctx(epochs=_epochs(val, train, tacc, vacc)))) == expected


def test_without_setup_evidence_says_what_to_run():
    d = data_leakage(ctx(None))
    assert d.findings == [] and "wf phase setup" in d.probes["note"]


def gpu_ctx(p50, wait, batch, device="cuda:0", available=True):
    metrics = {"device": device, "batch_size": batch, "num_workers": 2,
               "gpu": {"available": available, "p50": p50, "mean": p50, "target_percent": 60},
               "epochs": [{"duration_s": 10.0, "data_wait_fraction": wait}]}
    return DiagnoseContext(Path("."), RUN, Path("."), run_metrics(**metrics), None)


@pytest.mark.parametrize("p50, wait, batch, device, available, expected", [
    (85, 0.05, 64, "cuda:0", True, []),
    (3, 0.64, 128, "cuda:0", True, [("dataloader_bound", 0.85)]),   # the H100 NPZ run
    (20, 0.05, 32, "cuda:0", True, [("batch_too_small", 0.7)]),
    (20, 0.05, 512, "cuda:0", True, [("model_too_small", 0.6)]),
    (None, 0.0, 32, "cpu", False, []),                               # nothing to measure
])
def test_resource_inefficiency(p50, wait, batch, device, available, expected):
    assert causes(resource_inefficiency(gpu_ctx(p50, wait, batch, device, available))) == expected


@pytest.mark.parametrize("first_loss, expected", [(2.30, []), (4.0, []), (9.5, [("saturated_outputs", 0.8)])])
def test_bad_initialization(tmp_path, first_loss, expected):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "steps.csv").write_text(f"step,epoch,loss,grad_norm,lr\n0,1,{first_loss},1.0,0.001\n")
    c = DiagnoseContext(tmp_path, RUN, tmp_path, run_metrics(data={"num_classes": 10}), None)
    assert causes(bad_initialization(c)) == expected


@pytest.mark.parametrize("n, expected", [(0, []), (1, [("gradient_spikes", 0.7)]), (5, [("gradient_spikes", 0.9)])])
def test_exploding_gradients(n, expected):
    anomalies = [{"kind": "exploding", "step": 10 * i, "message": "spike"} for i in range(n)]
    anomalies.append({"kind": "stalled", "step": 999, "message": "flat"})
    c = DiagnoseContext(Path("."), RUN, Path("."), run_metrics(anomalies=anomalies), None)
    found = causes(exploding_gradients(c))
    assert [(cause, round(conf, 2)) for cause, conf in found] == expected


@pytest.mark.parametrize("late_norm, expected", [(2.5, []), (50.0, ["gradient_spikes"])])
def test_a_spike_over_a_converged_models_tiny_gradients_is_not_an_explosion(tmp_path, late_norm, expected):
    """Late in a healthy SGD run the running median is 0.03 and one hard batch gives 2.5: 80× the
    median, yet below the first epoch's gradients (median 2.0). 50 is far above both."""
    (tmp_path / "logs").mkdir()
    rows = [f"{i},1,1.0,{2.0 + 0.01 * i},0.05" for i in range(40)]
    rows += [f"{i},5,0.01,0.03,0.05" for i in range(40, 500)] + [f"500,5,0.2,{late_norm},0.05"]
    (tmp_path / "logs" / "steps.csv").write_text("step,epoch,loss,grad_norm,lr\n" + "\n".join(rows) + "\n")
    anomalies = [{"kind": "exploding", "step": 500, "epoch": 5,
                  "message": f"gradient norm {late_norm} is {late_norm / 0.03:.0f}× the running median 0.03"}]
    c = DiagnoseContext(tmp_path, RUN, tmp_path, run_metrics(anomalies=anomalies), None)
    diagnosis = exploding_gradients(c)
    assert [f.cause for f in diagnosis.findings] == expected
    assert diagnosis.probes["first_epoch_median_grad_norm"] == pytest.approx(2.195)
    if not expected:
        assert "not above the first epoch's gradients" in diagnosis.probes["note"]


def _overfit(val_size, val_acc):
    m = run_metrics(epochs=_epochs([1.0, 0.5, 0.6, 0.8], [1.0, 0.5, 0.2, 0.05], 0.99, val_acc),
                    data={"train_size": 1000, "val_size": val_size})
    return overfitting(DiagnoseContext(Path("."), RUN, Path("."), m, None))


def test_an_accuracy_gap_that_the_validation_noise_explains_is_not_overfitting():
    """A 10-point gap on 20 validation samples is within two standard errors (14 points); on 2,000
    it is not. The finding's strength says how far out of the noise it stands, and the diagnosis
    says the smallest gap it could have seen."""
    small = _overfit(20, 0.89)
    assert small.findings == []
    assert "gap of 14.0%" in small.sensitivity["overfitting"] and "20 validation" in small.sensitivity["overfitting"]
    large = _overfit(2000, 0.89)
    (finding,) = large.findings
    assert finding.strength is not None and finding.strength > 10
    assert "standard errors of 2000 validation samples" in finding.explanation


def test_a_finding_barely_out_of_the_noise_ranks_below_a_strong_one():
    from mlflow_core.diagnostics.findings import Finding, evidence_rank

    weak = Finding("overfitting", "overfitting", 0.7, {}, "", "", strength=2.1)
    strong = Finding("class_imbalance", "skewed_classes", 0.7, {}, "", "", strength=9.0)
    observed = Finding("nan_loss", "lr_too_high", 0.7, {}, "", "")
    assert sorted([weak, strong, observed], key=evidence_rank) == [observed, strong, weak]


@pytest.mark.parametrize("train_size, cause", [(60, "too_little_data"), (5000, "generalization_gap")])
def test_a_fitted_model_far_behind_on_validation_is_a_generalization_gap_before_its_val_loss_rises(train_size, cause):
    """A small dataset memorised: train accuracy 100 %, validation 77 % and its loss still falling.
    Not the classic rising-loss overfit, but a gap 8 standard errors wide; with 6 samples per class
    the remedy named is data."""
    falling = [2.3, 2.0, 1.6, 1.3, 1.1, 0.95]
    epochs = _epochs(falling, [2.0, 1.0, 0.5, 0.3, 0.2, 0.13], 1.0, 0.77)
    m = run_metrics(epochs=epochs, data={"train_size": train_size, "val_size": 397, "num_classes": 10})
    (finding,) = overfitting(DiagnoseContext(Path("."), RUN, Path("."), m, None)).findings
    assert finding.cause == cause and finding.strength > 8
    assert ("6 training samples per class" in finding.explanation) == (cause == "too_little_data")
