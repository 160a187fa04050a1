"""Dynamics diagnostics on hand-written evidence (rules), and their probes on real tiny models."""

import math
from pathlib import Path

import pytest

from mlflow_core.diagnostics.context import DiagnoseContext
from mlflow_core.diagnostics.convergence_stall import stall_symptoms
from mlflow_core.diagnostics.underfitting import underfitting
from mlflow_core.diagnostics.vanishing_gradients import vanishing_gradients
from mlflow_core.workflow.state import RunRecord
from tests.helpers import run_metrics

RUN = RunRecord(run_id="r1", phase="baseline", status="completed", started_at="t", dir="runs/r1")


def ctx(metrics, run_dir=Path("."), losses=None):
    c = DiagnoseContext(Path("."), RUN, run_dir, run_metrics(**metrics), None)
    if losses is not None:
        c.cache["steps"] = [{"step": i, "epoch": 1, "loss": v, "grad_norm": 1.0} for i, v in enumerate(losses)]
    return c


def causes(diagnosis):
    return [f.cause for f in diagnosis.findings]


def layer_metrics(grads, activations=None):
    names = [f"l{i}.weight" for i in range(len(grads))]
    return {"layers": {"names": names, "numel": [100] * len(grads),
                       "records": [{"epoch": 1, "step": 0, "grad_norm": grads, "weight_norm": [1.0] * len(grads)}]},
            "architecture": {"activations": activations or {"ReLU": 3}, "normalization": {}}}


@pytest.mark.parametrize("grads, activations, expected", [
    ([0.5, 0.8, 1.0, 1.2], None, []),                                    # healthy: ratio 0.4
    ([1e-5, 1e-3, 0.1, 1.0], {"Sigmoid": 3}, ["saturating_activations"]),  # ratio 1e-5, sigmoid
    ([1e-4, 1e-3, 0.1, 1.0], None, ["deep_plain_network"]),              # ratio 1e-4, ReLU
    ([2e-3, 1e-2, 0.1, 1.0], None, []),                                   # ratio 2e-3: above 1e-3
    ([0.0, 0.0, 0.0, 1.0], None, ["no_gradient"]),                        # nothing flows: not vanishing
    ([float("nan"), 1.0, 1.0, 1.0], None, []),                            # non-finite records are skipped
])
def test_vanishing_gradients_rules(grads, activations, expected):
    d = vanishing_gradients(ctx(layer_metrics(grads, activations)))
    assert causes(d) == expected
    if expected and expected[0] != "no_gradient":
        assert d.findings[0].evidence["first_layer"] == "l0.weight"


def test_vanishing_gradients_needs_three_layers():
    d = vanishing_gradients(ctx(layer_metrics([1e-9, 1.0])))
    assert d.findings == [] and "fewer than 3" in d.probes["note"]


@pytest.mark.parametrize("losses, accs, flat, at_chance", [
    ([2.3] * 30, [0.1], True, True),
    ([2.3 - 0.05 * i for i in range(30)], [0.8], False, False),
    ([2.3 - 0.05 * i for i in range(30)], [0.1, 0.15], False, True),  # train loss falls, val at chance
    ([2.3] * 10, [0.5], False, False),                                 # too few steps to judge flatness
])
def test_stall_symptoms(losses, accs, flat, at_chance):
    metrics = {"data": {"num_classes": 10}, "epochs": [{"val_accuracy": a} for a in accs]}
    s = stall_symptoms(ctx(metrics, losses=losses))
    assert (s["flat"], s["at_chance"]) == (flat, at_chance)


def _underfit_metrics(train_losses, train_acc, val_acc, best, target=0.97, status="completed", wd=0.0, dropout=0.0,
                      train_size=100):
    epochs = [{"epoch": i + 1, "train_loss": loss, "train_accuracy": train_acc, "val_accuracy": val_acc}
              for i, loss in enumerate(train_losses)]
    return {"epochs": epochs, "status": status, "metric": "val_accuracy", "mode": "max", "target": target,
            "best": {"metric": "val_accuracy", "value": best}, "data": {"num_classes": 10, "train_size": train_size},
            "config": {"training": {"weight_decay": wd}, "model": {"dropout": dropout}}}


FALLING = [2.0, 1.5, 1.2, 1.0, 0.9, 0.8]
LEVEL = [2.0, 1.0, 0.80, 0.79, 0.80, 0.79, 0.80, 0.79]  # the last 3 epochs ≈ the 3 before


@pytest.mark.parametrize("metrics, expected", [
    (_underfit_metrics(FALLING, 0.70, 0.69, 0.70), ["too_few_epochs"]),
    (_underfit_metrics(LEVEL, 0.70, 0.69, 0.70), ["capacity_too_low"]),
    (_underfit_metrics(FALLING, 0.70, 0.69, 0.70, status="early_stopped"), ["capacity_too_low"]),
    (_underfit_metrics(LEVEL, 0.70, 0.69, 0.70, wd=0.1), ["over_regularized"]),
    (_underfit_metrics(LEVEL, 0.99, 0.90, 0.90), []),   # train reaches the target: variance, not bias
    (_underfit_metrics(LEVEL, 0.99, 0.98, 0.98), []),   # target met
    (_underfit_metrics(LEVEL, 0.45, 0.44, 0.44, target=None), ["capacity_too_low"]),  # no target: < 0.6
    # 55 % on 100 training samples is within two standard errors (10 points) of 60 %: not judged short
    (_underfit_metrics(LEVEL, 0.55, 0.54, 0.54, target=None), []),
    (_underfit_metrics(LEVEL, 0.55, 0.54, 0.54, target=None, train_size=10_000), ["capacity_too_low"]),
    (_underfit_metrics(LEVEL, 0.65, 0.64, 0.64, target=None), []),
])
def test_underfitting_rules(metrics, expected):
    losses = [2.3 - 0.05 * i for i in range(30)]  # learning: no stall
    assert causes(underfitting(ctx(metrics, losses=losses))) == expected


def test_underfitting_does_not_compare_a_train_loss_with_a_validation_only_metric_target():
    """val_mcc 0.85 misses its target 0.9, and training measures no MCC: the training loss (0.79)
    is not a stand-in for it (0.79 < 0.9 would read as 'training misses the target too'); train
    accuracy 0.99 says high variance, not high bias."""
    metrics = _underfit_metrics(LEVEL, 0.99, 0.90, 0.85, target=0.9)
    metrics["metric"], metrics["best"]["metric"] = "val_mcc", "val_mcc"
    d = underfitting(ctx(metrics, losses=[2.3 - 0.05 * i for i in range(30)]))
    assert d.findings == [] and d.probes["train_missed_target"] is False


def test_underfitting_defers_to_a_stall():
    d = underfitting(ctx(_underfit_metrics(LEVEL, 0.1, 0.1, 0.1), losses=[2.3] * 30))
    assert d.findings == [] and "convergence_stall" in d.probes["note"]


# --- probes on real (tiny) models -------------------------------------------------------------------

torch = pytest.importorskip("torch")
nn = torch.nn


class FunctionalRelu(nn.Module):
    """Two relu call sites inside one module's forward, one of them fully dead."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 6)
        nn.init.constant_(self.b.bias, -100.0)

    def forward(self, x):
        return torch.relu(self.b(torch.relu(self.a(x))))


def test_dead_units_sees_module_and_functional_relus():
    from mlflow_core.diagnostics.dynamics import dead_units

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), FunctionalRelu())
    batches = [(torch.randn(32, 4), torch.zeros(32, dtype=torch.long)) for _ in range(2)]
    layers = {layer["layer"]: layer for layer in dead_units(model, batches)}
    assert set(layers) == {"1", "2", "2#2"}
    assert layers["2#2"]["dead_fraction"] == 1.0 and layers["2#2"]["units"] == 6
    assert layers["1"]["dead_fraction"] < 0.5
    out = model(batches[0][0])  # the probe left no hook behind: outputs are tensors again
    assert isinstance(out, torch.Tensor)


def test_dead_units_per_channel_in_convolutions():
    from mlflow_core.diagnostics.dynamics import dead_units

    conv = nn.Conv2d(1, 4, 3, padding=1)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([-100.0, -100.0, -100.0, 0.0]))
        conv.weight.zero_()
        conv.weight[3].fill_(1.0)
    model = nn.Sequential(conv, nn.ReLU())
    layers = dead_units(model, [(torch.rand(8, 1, 6, 6), torch.zeros(8, dtype=torch.long))])
    assert layers == [{"layer": "1", "units": 4, "dead": 3, "dead_fraction": 0.75}]


@pytest.fixture(scope="module")
def digits():
    from mlflow_core.config import load_config_text
    from mlflow_core.training.data.sources import build_data

    cfg = load_config_text("training: {device: cpu, epochs: 1}\nmodel: {channels: [16, 32]}\n", "test")
    return cfg, build_data(cfg, Path("."))


def test_lr_range_test_suggests_a_learning_rate_and_stops_on_divergence(digits):
    from mlflow_core.training.lr_finder import lr_range_test

    cfg, data = digits
    sweep = lr_range_test(cfg, Path("."), data, steps=60, start_lr=1e-6, end_lr=100.0)
    assert 1e-5 < sweep["suggested_lr"] < 10
    assert sweep["steepest_slope"] < 0
    assert len(sweep["lrs"]) < 60 and "lr" in sweep["stop_reason"]  # lr 100 diverges before the end
    assert min(sweep["smoothed"]) < 0.9 * sweep["smoothed"][0]


def test_single_batch_overfit_and_label_control_on_digits(digits):
    from mlflow_core.diagnostics.dynamics import shuffled_label_control, single_batch_overfit

    cfg, data = digits
    overfit = single_batch_overfit(cfg, Path("."), data, steps=60)
    assert overfit["fitted"] and overfit["batch_accuracy"] == 1.0 and overfit["last_loss"] < overfit["first_loss"] / 2
    control = shuffled_label_control(cfg, Path("."), data, steps=60)
    assert control["real"]["val_accuracy"] > 0.5 > control["shuffled"]["val_accuracy"]
    assert control["accuracy_margin"] > 0.3
    assert math.isfinite(control["real"]["val_loss"])


def test_throughput_probe_measures_both_sides(digits):
    from mlflow_core.diagnostics.dynamics import throughput

    cfg, data = digits
    out = throughput(cfg, Path("."), data, batches=5)
    assert out["loader_s_per_batch"] > 0 and out["model_s_per_step"] > 0 and out["loader_to_model"] > 0


@pytest.mark.parametrize("dropout, expected", [(0.0, []), (0.5, ["over_regularized"])])
def test_training_harder_than_validation_is_not_a_model_short_of_capacity(dropout, expected):
    """Training labels with annotation noise: train accuracy 75 % under a clean validation's 87 %.
    A larger model does not fix that, so underfitting does not claim it, and says why; with heavy
    dropout the same gap is the regulariser's, which it names."""
    metrics = _underfit_metrics(LEVEL, 0.75, 0.87, 0.87, dropout=dropout, train_size=1400)
    metrics["data"]["val_size"] = 397
    diagnosis = underfitting(ctx(metrics, losses=[2.3 - 0.05 * i for i in range(30)]))
    assert causes(diagnosis) == expected
    if not expected:
        assert "training labels are noisier than the validation labels" in diagnosis.probes["note"]
