"""Learning-curve pictures (PNG) linked from the reports. matplotlib is part of the training extra;
without it the report says so instead of showing pictures."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mlflow_core.atomic import atomic_write_bytes


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def learning_curves(metrics: dict[str, Any], figures_dir: Path, prefix: str) -> tuple[list[dict[str, str]], str | None]:
    """Write loss, accuracy and LR curves; return ([{title, file}], note-if-none)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed (pip install 'wf[train]'); no pictures"
    epochs = metrics.get("epochs") or []
    if not epochs:
        return [], "no finished epoch to plot"
    xs = [e["epoch"] for e in epochs]
    panels = [
        ("loss", "Loss", [("train", "train_loss"), ("validation", "val_loss")]),
        ("accuracy", "Accuracy", [("train", "train_accuracy"), ("validation", "val_accuracy")]),
        ("lr", "Learning rate", [("lr", "lr")]),
    ]
    out = []
    for slug, title, series in panels:
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        for label, key in series:
            pts = [(x, _num(e.get(key))) for x, e in zip(xs, epochs) if key in e]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        best = metrics.get("best")
        if best and slug != "lr":
            ax.axvline(best["epoch"], color="grey", linestyle=":", linewidth=1,
                       label=f"best {best['metric']} (epoch {best['epoch']})")
        if slug == "lr":
            ax.set_yscale("log")
        else:
            ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})  # no timestamp: same curves, same bytes
        plt.close(fig)
        name = f"{prefix}_{slug}.png"
        atomic_write_bytes(figures_dir / name, buf.getvalue())
        out.append({"title": title, "file": f"figures/{name}"})
    return out, None
