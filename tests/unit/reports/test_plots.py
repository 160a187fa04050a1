"""The report figures (reports/plots.py), read back as pictures where it matters: what the gate
judges is drawn, with its target, on whole-number epochs."""

import pytest

pytest.importorskip("matplotlib")

from mlflow_core.reports.plots import _compact, confusion_figure, learning_curves


def _metrics(metric: str, target: float | None) -> dict:
    epochs = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_accuracy": 0.5 + e / 10,
               "val_accuracy": 0.45 + e / 10, "val_iou": 0.3 + e / 10, "lr": 0.001} for e in (1, 2, 3)]
    return {"epochs": epochs, "metric": metric, "target": target, "best": {"metric": metric, "epoch": 3}}


def test_the_gated_metric_gets_its_own_figure_with_its_target(tmp_path):
    figures, note = learning_curves(_metrics("val_iou", 0.55), tmp_path, "baseline")
    assert note is None
    assert [f["title"] for f in figures] == ["Mean IoU", "Loss", "Accuracy"]  # the gated one first
    assert (tmp_path / "baseline_val_iou.png").read_bytes()[:4] == b"\x89PNG"


def test_the_target_line_and_whole_epoch_ticks_are_drawn(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.axhline

    def recording(ax, y=0, *args, **kwargs):
        drawn.append((ax.get_title(), y, kwargs.get("label")))
        return original(ax, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", recording)
    learning_curves(_metrics("val_accuracy", 0.9), tmp_path, "baseline")
    assert drawn == [("Accuracy", pytest.approx(90.0), "target 90.0 % (validation.target)")]


def test_a_confusion_matrix_of_few_classes_is_legible_and_pixel_counts_fit(tmp_path):
    from PIL import Image

    figure = confusion_figure([[1_234_567, 20], [3, 987_654]], tmp_path, ["ice", "rock"])
    width, height = Image.open(tmp_path / figure["file"].split("/")[-1]).size
    assert width >= 500 and height >= 450  # as large as the report's other figures, at 2 classes too
    assert _compact(1_234_567) == "1.2M" and _compact(20) == "20" and _compact(98_765) == "98,765"
