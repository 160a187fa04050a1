"""Helpers shared by test modules."""

from __future__ import annotations

from pathlib import Path


def configure(project: Path, settings) -> None:
    """Set section.key values in the project's training_config.yaml, comments kept."""
    from mlflow_core.workflow.scaffold import set_yaml_value

    config = project / "training_config.yaml"
    text = config.read_text()
    for key, value in settings:
        text = set_yaml_value(text, key, value)
    config.write_text(text)


def run_metrics(**given):
    """A run's metrics.json record (RunMetrics) of a short CPU run, with `given` over it: the data,
    best value and architecture merged into what the trainer records, and each epoch filled out."""
    from mlflow_core.workflow.records import RunMetrics

    base = {
        "run_id": "r1", "phase": "baseline", "status": "completed", "device": "cpu", "torch": "2", "model": "m",
        "parameters": 1000, "seed": 0, "seeded": [], "deterministic": True, "metric": "val_loss", "mode": "min",
        "target": None, "epochs_planned": 1, "batch_size": 32, "num_workers": 0, "best": None, "nonfinite": None,
        "checkpoints": {}, "steps": 10, "recipe": {}, "stages": [], "config": {},
        "data": {"source": "test", "train_size": 100, "val_size": 20, "num_classes": 10, "input_shape": [1, 8, 8]},
        "architecture": {"activations": {}, "normalization": {}, "weight_layers": 2},
        "layers": {"names": [], "numel": [], "records": []},
    }
    for key in ("data", "architecture"):
        given[key] = {**base[key], **given.get(key, {})}
    if given.get("best"):
        given["best"] = {"epoch": 1, **given["best"]}
    given["anomalies"] = [{"epoch": None, **a} for a in given.get("anomalies", [])]
    given["epochs"] = [{"epoch": i + 1, "train_loss": 1.0, "train_accuracy": 0.5, "lr": 1e-3, "duration_s": 1.0, **e}
                       for i, e in enumerate(given.get("epochs", []))]
    return RunMetrics.model_validate({**base, **given})


def write_crashing_model(project: Path) -> None:
    """`mymodel:Fragile`, a custom model (digits-sized) whose training crashes at its 21st forward
    pass: a crash mid-run, as a lost GPU gives it; training_config.yaml is pointed at it."""
    (project / "mymodel.py").write_text(
        "import torch\nclass Fragile(torch.nn.Module):\n"
        "    def __init__(self, num_classes, in_channels):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(64 * in_channels, num_classes)\n        self.calls = 0\n"
        "    def forward(self, x):\n        self.calls += 1\n"
        "        if self.training and self.calls > 20:\n            raise RuntimeError('the GPU fell off the bus')\n"
        "        return self.fc(x.flatten(1))\n")
    configure(project, [("model.name", "custom"), ("model.target", "mymodel:Fragile")])

