"""Learning-curve pictures (PNG) linked from the reports. matplotlib is part of the training extra;
without it the report says so instead of showing pictures."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from mlflow_core.atomic import atomic_write_bytes
from mlflow_core.workflow.facts import OptimizationFacts
from mlflow_core.workflow.units import metric_value

NO_MATPLOTLIB = "matplotlib is not installed (pip install 'wf-phases[train]'); no pictures"


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or None where matplotlib is absent."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


GATED_TITLES = {"val_iou": "Mean IoU", "val_f1": "Macro F1", "val_mcc": "Matthews correlation (MCC)"}


def learning_curves(metrics: dict[str, Any], figures_dir: Path, prefix: str) -> tuple[list[dict[str, str]], str | None]:
    """Write loss, accuracy and LR curves; return ([{title, file}], note-if-none)."""
    plt = _pyplot()
    if plt is None:
        return [], NO_MATPLOTLIB
    epochs = metrics.get("epochs") or []
    if not epochs:
        return [], "no finished epoch to plot"
    from matplotlib.ticker import MaxNLocator

    xs = [e["epoch"] for e in epochs]
    # (file, title, y-axis label, scale of the values, series); accuracy in %, as the report's tables
    panels = [
        ("loss", "Loss", "loss (the training objective)", 1.0, [("train", "train_loss"), ("validation", "val_loss")]),
        ("accuracy", "Accuracy", "accuracy (%)", 100.0, [("train", "train_accuracy"), ("validation", "val_accuracy")]),
        ("lr", "Learning rate", "learning rate (log scale)", 1.0, [("lr", "lr")]),
    ]
    gated = metrics.get("metric")  # what the gate judges gets a figure of its own (mean IoU, F1, MCC)
    if gated in GATED_TITLES:
        panels.insert(0, (gated, GATED_TITLES[gated], f"{GATED_TITLES[gated]} (validation)", 1.0,
                          [("validation", gated)]))
    judged_on = {"val_loss": "loss", "val_accuracy": "accuracy"}.get(gated, gated)
    if len({e.get("lr") for e in epochs}) <= 1:  # a constant LR is a flat line: said in words instead
        panels.pop()
        (figures_dir / f"{prefix}_lr.png").unlink(missing_ok=True)  # an earlier render's, now wrong
    out = []
    for slug, title, ylabel, scale, series in panels:
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        for label, key in series:
            pts = [(x, _num(e.get(key)) * scale) for x, e in zip(xs, epochs) if key in e]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        target = metrics.get("target")
        if target is not None and slug == judged_on:  # the line the gate holds the metric to
            ax.axhline(target * scale, color="red", linestyle="--", linewidth=1,
                       label=f"target {metric_value(target, gated)} (validation.target)")
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


def diagnosis_figures(diagnosis: dict[str, Any], run_dir: Path,
                      figures_dir: Path) -> tuple[list[dict[str, str]], str | None]:
    """The loss and gradient norm around the failure (from logs/steps.csv) and, when probed, each
    layer's first-update/weight ratio at the configured learning rate."""
    plt = _pyplot()
    if plt is None:
        return [], NO_MATPLOTLIB
    import csv

    out = []
    name = diagnosis["diagnostic"]
    steps_csv = run_dir / "logs" / "steps.csv"
    rows = list(csv.DictReader(steps_csv.open(encoding="utf-8"))) if steps_csv.is_file() else []
    if rows:
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6.5, 4.6), dpi=100, sharex=True)
        for ax, key, label in ((ax1, "loss", "training loss"), (ax2, "grad_norm", "gradient norm")):
            pts = [(int(r["step"]), _num(r[key])) for r in rows]
            pts = [(x, y) for x, y in pts if math.isfinite(y) and y > 0]  # a log axis shows finite values
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=2)
            ax.set_ylabel(label)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        nan = [f for f in diagnosis["findings"] if f["diagnostic"] == "nan_loss"]
        bad = nan[0]["evidence"].get("step") if nan else None
        if bad is not None:
            for ax in (ax1, ax2):
                ax.axvline(bad, color="red", linestyle=":", label=f"first non-finite step {bad}")
            ax1.legend()
        ax2.set_xlabel("step")
        fig.suptitle(f"Run {diagnosis['run']}: " + ("the steps before the failure" if bad is not None
                                                     else "loss and gradient norm per step"))
        fig.tight_layout()
        out.append(_save(fig, plt, figures_dir, f"diagnosis_{name}_curve.png", "Loss and gradient norm per step"))
    probes = diagnosis["probes"]
    scale = probes.get("update_scale") or (probes.get("nan_loss") or {}).get("update_scale")
    layers = [layer for layer in (scale or {}).get("layers", [])
              if math.isfinite(layer["update_ratio"]) and layer["update_ratio"] > 0]
    if layers:  # none are finite when the offending batch itself holds NaN/Inf
        fig, ax = plt.subplots(figsize=(6.5, max(2.5, 0.22 * len(layers) + 1)), dpi=100)
        ax.barh([layer["name"] for layer in layers], [layer["update_ratio"] for layer in layers])
        ax.axvline(0.1, color="red", linestyle=":", label="0.1: too large")
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("first update / weight norm, per layer, at the configured learning rate")
        ax.legend()
        ax.grid(alpha=0.3, axis="x")
        fig.tight_layout()
        out.append(_save(fig, plt, figures_dir, f"diagnosis_{name}_layers.png", "Per-layer update size"))
    out += _dynamics_figures(diagnosis, figures_dir, plt)
    return out, None if out else "no step log to plot"


def _probe(diagnosis: dict[str, Any], name: str) -> dict[str, Any]:
    """A diagnostic's probes, whether it ran alone or inside `auto`."""
    if diagnosis["diagnostic"] == name:
        return diagnosis["probes"]
    return diagnosis["probes"].get(name) or {} if diagnosis["diagnostic"] == "auto" else {}


def _dynamics_figures(diagnosis: dict[str, Any], figures_dir: Path, plt: Any) -> list[dict[str, str]]:
    out = []
    name = diagnosis["diagnostic"]
    grads = [(layer["name"], _num(layer["grad_norm"]))
             for layer in _probe(diagnosis, "vanishing_gradients").get("layers", [])]
    grads = [(n, g) for n, g in grads if math.isfinite(g) and g > 0]
    if grads and (name == "vanishing_gradients" or any(f["diagnostic"] == "vanishing_gradients"
                                                       for f in diagnosis["findings"])):
        fig, ax = plt.subplots(figsize=(6.5, max(2.5, 0.22 * len(grads) + 1)), dpi=100)
        ax.barh([n for n, _ in grads], [g for _, g in grads])
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("gradient norm per weight layer (first layer at the top), last recorded step")
        ax.grid(alpha=0.3, axis="x")
        fig.tight_layout()
        out.append(_save(fig, plt, figures_dir, f"diagnosis_{name}_gradients.png", "Gradient norm per layer"))
    dead = _probe(diagnosis, "dead_relu")
    layers = dead.get("layers") or []
    if layers and (name == "dead_relu" or any(f["diagnostic"] == "dead_relu" for f in diagnosis["findings"])):
        init = {layer["layer"]: layer["dead_fraction"] for layer in dead.get("at_init") or []}
        fig, ax = plt.subplots(figsize=(6.5, max(2.5, 0.3 * len(layers) + 1)), dpi=100)
        y = range(len(layers))
        ax.barh([i + 0.2 for i in y], [layer["dead_fraction"] for layer in layers], height=0.4, label="last weights")
        ax.barh([i - 0.2 for i in y], [init.get(layer["layer"], 0.0) for layer in layers], height=0.4, label="initialisation")
        ax.set_yticks(list(y), [layer["layer"] for layer in layers])
        ax.axvline(0.5, color="red", linestyle=":", label="50 %")
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_xlabel("share of units that never fire")
        ax.legend()
        fig.tight_layout()
        out.append(_save(fig, plt, figures_dir, f"diagnosis_{name}_dead_units.png", "Dead units per ReLU"))
    sweep = _probe(diagnosis, "convergence_stall").get("lr_range_test") or {}
    if sweep.get("lrs"):
        fig, ax = plt.subplots(figsize=(6.5, 3.4), dpi=100)
        ax.plot(sweep["lrs"], sweep["losses"], alpha=0.3, label="loss")
        ax.plot(sweep["lrs"], sweep["smoothed"], label="smoothed")
        if sweep.get("suggested_lr"):
            ax.axvline(sweep["suggested_lr"], color="green", linestyle=":",
                       label=f"suggested {sweep['suggested_lr']:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out.append(_save(fig, plt, figures_dir, f"diagnosis_{name}_lr_range.png", "LR range test"))
    return out


def optimization_figures(facts: OptimizationFacts, figures_dir: Path, configured_lr: float | None = None,
                         baseline: tuple[float, int] | None = None) -> tuple[list[dict[str, str]], str | None]:
    """The sweep's history (each trial's value, the best so far, and the baseline run's best value
    and epochs as a reference line) and the LR range test, with the configured learning rate marked."""
    plt = _pyplot()
    if plt is None:
        return [], NO_MATPLOTLIB
    out = []
    trials = [t for t in facts.trials if t.value is not None]
    if trials:
        from matplotlib.ticker import MaxNLocator

        maximize = facts.direction == "maximize"
        fig, ax = plt.subplots(figsize=(8.5, 3.4), dpi=100)
        scale = 100.0 if facts.metric.endswith("accuracy") else 1.0  # accuracies in %, as the tables
        completed = [t for t in trials if t.state == "COMPLETE"]
        pruned = [t for t in trials if t.state == "PRUNED"]
        ax.plot([t.number for t in completed], [t.value * scale for t in completed], "o", label="completed trial")
        if pruned:  # the value where the pruner stopped it, not a finished trial's
            ax.plot([t.number for t in pruned], [t.value * scale for t in pruned], "x", color="grey",
                    label="pruned trial (its value when stopped)")
        best, running = None, []
        for t in completed:
            best = t.value if best is None or (t.value > best if maximize else t.value < best) else best
            running.append(best * scale)
        if completed:
            ax.step([t.number for t in completed], running, where="post", label="best so far")
        if baseline is not None:
            ax.axhline(baseline[0] * scale, color="black", linestyle="--", linewidth=1,
                       label=f"baseline run's best ({baseline[1]} epochs; trials train {facts.study.trial_epochs})")
        numbers = [t.number for t in trials]  # whole trials only, whatever their count (one included)
        ax.set_xlim(min(numbers) - 0.5, max(numbers) + 0.5)
        if max(numbers) - min(numbers) < 20:
            ax.set_xticks(range(min(numbers), max(numbers) + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{facts.metric}{' (%)' if scale == 100.0 else ''}, best epoch")
        ax.set_title("Optimization history")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")  # beside the points, not on them
        fig.tight_layout()
        out.append(_save(fig, plt, figures_dir, "optimization_history.png", "Optimization history"))
    sweep = facts.lr_range_test
    figure = (lr_range_figure({**sweep.model_dump(), "configured_lr": configured_lr}, figures_dir,
                              "optimization_lr_range.png")
              if sweep and sweep.lrs else None)
    out += [figure] if figure else []
    return out, None if out else "no completed trial to plot"


def lr_range_figure(sweep: dict[str, Any], figures_dir: Path, name: str) -> dict[str, str] | None:
    """The smoothed loss against the learning rate, with the suggestion (and the configured LR)."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.4), dpi=100)
    if sweep.get("losses"):
        ax.plot(sweep["lrs"], sweep["losses"], alpha=0.3, label="loss")
    ax.plot(sweep["lrs"], sweep["smoothed"], label="smoothed loss")
    if sweep.get("suggested_lr"):
        ax.axvline(sweep["suggested_lr"], color="green", linestyle=":", label=f"suggested {sweep['suggested_lr']:.2g}")
    if sweep.get("configured_lr"):
        ax.axvline(sweep["configured_lr"], color="grey", linestyle="--", label=f"configured {sweep['configured_lr']:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_title("LR range test")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, plt, figures_dir, name, "LR range test")


def confusion_figure(confusion: list[list[int]], figures_dir: Path,
                     class_names: list[str] | None = None) -> dict[str, str] | None:
    """The test confusion matrix, rows normalised to recall, counts written in the cells, the axes
    labelled with the classes' names when the data has them."""
    plt = _pyplot()
    if plt is None:
        return None
    n = len(confusion)
    # legible at any class count: never smaller than a report's other figures, the counts' type larger
    # where the cells are few (a segmentation's pixel counts shortened to 1.2M)
    side = min(max(4.8, 1.2 + 0.55 * n), 9.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side), dpi=100)
    rates = [[c / max(sum(row), 1) for c in row] for row in confusion]
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        size = 12 if n <= 5 else 10 if n <= 10 else 7
        for i, row in enumerate(confusion):
            for j, count in enumerate(row):
                ax.text(j, i, _compact(count), ha="center", va="center", fontsize=size,
                        color="white" if rates[i][j] > 0.5 else "black")
    if class_names and len(class_names) == n and n <= 30:
        ax.set_xticks(range(n), class_names, rotation=45 if max(map(len, class_names)) > 3 else 0, ha="right")
        ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    return _save(fig, plt, figures_dir, "final_confusion_matrix.png", "Confusion matrix on the test split")


def _compact(count: int) -> str:
    """1234 → '1,234'; 1234567 → '1.2M': a pixel count that fits its cell."""
    return f"{count:,}" if count < 100_000 else f"{count / 1e6:.1f}M" if count < 1e9 else f"{count / 1e9:.1f}G"


def _save(fig: Any, plt: Any, figures_dir: Path, name: str, title: str) -> dict[str, str]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(figures_dir / name, buf.getvalue())
    return {"title": title, "file": f"figures/{name}"}
