"""The fault benchmark of `wf diagnose`.

Each case is a real project made with `wf init`, broken in one realistic way (a config value, a
user module from faultlib.py, or files in its dataset), or left healthy. Some cases are not one
clean effect: two faults at once (the order they must be listed in is stated with the case), a
fault just past a threshold and a mild one below it, a small dataset, and healthy runs whose
figures are noisy (annotation noise in the training labels, a 40-image validation set). For each: `wf phase setup`,
`wf phase baseline`, then `wf diagnose auto --json`, all through the real CLI in fresh processes.
Prints a confusion table (expected diagnostic → top-1 diagnosis), the share of correct top-1
diagnoses (and of correct causes), false alarms on healthy runs, the step lag between a NaN's first
appearance (found independently by a plain PyTorch loop over the same config) and wf's detection,
and the time to diagnosis.

    python bench/faults/run.py [--only NAME ...] [--keep DIR] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
CUSTOM_DIGITS = {"data.source": "custom", "data.target": "faultlib:digits", "data.num_classes": 10}


@dataclass
class Case:
    name: str
    expected: tuple[str, str] | None  # (diagnostic, cause); None for a healthy run
    edits: dict[str, Any] = field(default_factory=dict)
    example: str = "digits"
    data: Callable[[Path], None] | None = None  # breaks the dataset files of a patches project
    what: str = ""
    also: tuple[str, str] | None = None  # a second fault that must be among the findings, after the first


# --- dataset faults on 6-band Sentinel-2 NPZ patches --------------------------------------------------------

def _patches(project: Path) -> list[Path]:
    return sorted((project / "data" / "patches" / "train").glob("*.npz"))


def _rewrite(path: Path, image: np.ndarray, label: int) -> None:
    np.savez_compressed(path, image=image.astype(np.float32), label=np.int64(label))


def poison_nan(project: Path) -> None:
    """One patch with NaN pixels (cloud-masked values written as NaN): it turns up wherever the
    shuffled order puts it."""
    for path in _patches(project)[100:101]:
        with np.load(path) as z:
            image, label = z["image"].copy(), int(z["label"])
        image[:, :4, :4] = np.nan
        _rewrite(path, image, label)


def raw_reflectance(project: Path) -> None:
    """Raw Sentinel-2 digital numbers (0..10000) instead of reflectance: no normalisation."""
    for split in ("train", "val"):
        for path in sorted((project / "data" / "patches" / split).glob("*.npz")):
            with np.load(path) as z:
                image, label = z["image"] * 10000.0, int(z["label"])
            _rewrite(path, image, label)


def skew_classes(project: Path) -> None:
    """Keep every class-0 training patch and one in fifteen of the others."""
    for i, path in enumerate(_patches(project)):
        with np.load(path) as z:
            label = int(z["label"])
        if label != 0 and (i // 4) % 15:
            path.unlink()


def leak_val(project: Path) -> None:
    """Validation patches copied from the training folder (a split done twice)."""
    val = project / "data" / "patches" / "val"
    for i, path in enumerate(_patches(project)[: len(list(val.glob("*.npz")))]):
        shutil.copyfile(path, val / f"patch_{i:05d}.npz")


FAULTS = [
    Case("nan_lr_too_high", ("nan_loss", "lr_too_high"),
         {"training.optimizer": "sgd", "training.learning_rate": 1.0e4, "model.batch_norm": False},
         what="SGD at lr 1e4 on a CNN without BatchNorm"),
    Case("nan_lr_diverges_late", ("nan_loss", "lr_too_high"),
         {"model.name": "custom", "model.target": "faultlib:MLP", "training.optimizer": "sgd",
          "training.learning_rate": 0.5, "training.momentum": 0.9},
         what="SGD with momentum at lr 0.5 on a ReLU MLP: diverges after a few dozen steps"),
    Case("nan_unstable_op", ("nan_loss", "unstable_op"),
         {"model.name": "custom", "model.target": "faultlib:LogProbNet"},
         what="log of hand-made probabilities: log(0)"),
    Case("nan_nonfinite_inputs", ("nan_loss", "nonfinite_inputs"), example="patches", data=poison_nan,
         what="NaN pixels in one training patch"),
    Case("nan_amp_overflow", ("nan_loss", "amp_overflow"),
         {**CUSTOM_DIGITS, "data.kwargs": {"scale": 1.0e5}, "model.name": "custom", "model.target": "faultlib:MLP",
          "training.precision": "fp16"},
         what="raw sensor counts (up to 1e5) through an MLP in fp16"),
    Case("exploding_gradients", ("exploding_gradients", "gradient_spikes"),
         {**CUSTOM_DIGITS, "data.kwargs": {"outliers": 0.003, "outlier_scale": 50.0}, "model.name": "custom",
          "model.target": "faultlib:MLP", "training.optimizer": "sgd", "training.learning_rate": 0.05,
          "training.momentum": 0.9, "training.epochs": 6},
         what="four sensor-glitch images 50× too bright; SGD on a ReLU MLP"),
    Case("vanishing_sigmoid", ("vanishing_gradients", "saturating_activations"),
         {"model.name": "custom", "model.target": "faultlib:DeepSigmoid", "training.epochs": 4},
         what="12 sigmoid layers, no normalisation"),
    Case("dead_relu_bias", ("dead_relu", "dead_at_init"),
         {"model.name": "custom", "model.target": "faultlib:MLP", "model.kwargs": {"first_bias": -4.0},
          "training.epochs": 4},
         what="first layer's bias initialised at -4"),
    Case("dead_relu_high_lr", ("dead_relu", "died_in_training"),
         {"model.name": "custom", "model.target": "faultlib:MLP", "training.optimizer": "sgd",
          "training.momentum": 0.0, "training.learning_rate": 1.0, "training.epochs": 4},
         what="plain SGD at lr 1.0 on a ReLU MLP"),
    Case("stall_lr_too_low", ("convergence_stall", "lr_too_low"),
         {"training.learning_rate": 1.0e-7, "training.epochs": 4}, what="Adam at lr 1e-7"),
    Case("stall_random_labels", ("convergence_stall", "labels_uninformative"),
         {**CUSTOM_DIGITS, "data.kwargs": {"random_labels": True}, "training.epochs": 5},
         what="labels joined to the wrong images"),
    Case("overfitting_noisy_labels", ("overfitting", "overfitting"),
         {**CUSTOM_DIGITS, "data.kwargs": {"train": 300, "label_noise": 0.4}, "training.epochs": 40,
          "early_stopping.enabled": False, "validation.metric": "val_loss", "validation.target": None},
         what="300 training images, 40 % of their labels wrong, 40 epochs"),
    Case("stall_tiny_model", ("convergence_stall", "model_cannot_fit"),
         {"model.channels": [2], "training.epochs": 8},
         what="one conv block of 2 channels: cannot separate 10 classes"),
    Case("underfitting_small_model", ("underfitting", "capacity_too_low"),
         {"model.channels": [2, 4], "training.learning_rate": 0.01, "training.epochs": 30},
         what="two conv blocks of 2 and 4 channels, 30 epochs"),
    Case("underfitting_short_run", ("underfitting", "too_few_epochs"),
         {"model.channels": [4, 8], "training.learning_rate": 0.01, "training.epochs": 6},
         what="a small CNN stopped after 6 epochs while still improving"),
    Case("class_imbalance", ("class_imbalance", "skewed_classes"), example="patches", data=skew_classes,
         what="one class 15× the others in train"),
    Case("data_leakage", ("data_leakage", "train_val_overlap"), example="patches", data=leak_val,
         what="val patches copied from train"),
    Case("input_scaling", ("input_scaling", "unnormalized_inputs"), example="patches", data=raw_reflectance,
         what="raw 0..10000 digital numbers"),
    Case("bad_initialization", ("bad_initialization", "saturated_outputs"),
         {"model.name": "custom", "model.target": "faultlib:HotHeadCNN", "training.epochs": 4},
         what="classifier weights initialised 100× too large"),
    Case("dataloader_bound", ("resource_inefficiency", "dataloader_bound"),
         {**CUSTOM_DIGITS, "data.kwargs": {"delay_s": 0.002}, "training.epochs": 2},
         what="2 ms to load each sample, no workers"),
    # --- faults that are not one clean effect -------------------------------------------------------
    # Two at once: the non-finite loss comes first, because it stops training: no other symptom of
    # the run (its curves, its gap) can be judged until it trains, and its fix (clean the patch)
    # is needed whatever the skew. The skew is real too, and must be listed after it.
    Case("two_faults_nan_and_skew", ("nan_loss", "nonfinite_inputs"),
         {**CUSTOM_DIGITS, "data.kwargs": {"skew": 15, "nan_images": 1}}, also=("class_imbalance", "skewed_classes"),
         what="NaN pixels in one image and class 0 15× each other class"),
    Case("skew_at_threshold", ("class_imbalance", "skewed_classes"), {**CUSTOM_DIGITS, "data.kwargs": {"skew": 3.5}},
         what="class 0 about 3.5× each other class: just past the ratio of 3"),
    # A small dataset: 60 training images (6 per class) memorised in 30 epochs
    Case("small_dataset", ("overfitting", "too_little_data"),
         {**CUSTOM_DIGITS, "data.kwargs": {"train": 60}, "training.epochs": 30, "early_stopping.enabled": False,
          "validation.metric": "val_loss", "validation.target": None},
         what="60 training images (6 per class), 30 epochs"),
]

HEALTHY = [
    Case("healthy_digits", None, what="the digits example as `wf init` writes it"),
    Case("healthy_patches", None, example="patches", what="the patches example as `wf init` writes it"),
    Case("healthy_sgd_cosine", None, {"training.optimizer": "sgd", "training.learning_rate": 0.05,
                                      "training.scheduler": {"name": "cosine"}}, what="SGD + momentum, cosine"),
    Case("healthy_mlp", None, {"model.name": "custom", "model.target": "faultlib:MLP"},
         what="a ReLU MLP without normalisation, Adam"),
    Case("healthy_small_adamw", None, {"model.channels": [16, 32], "training.optimizer": "adamw",
                                       "training.weight_decay": 0.01, "training.scheduler": {"name": "plateau"}},
         what="a two-block CNN, AdamW, plateau schedule"),
    Case("healthy_class_noise", None, {**CUSTOM_DIGITS, "data.kwargs": {"label_noise": 0.3}},
         what="30 % of the training labels replaced at random (annotation noise), clean validation labels"),
    Case("healthy_small_val", None, {**CUSTOM_DIGITS, "data.kwargs": {"val": 40}},
         what="the digits run validated on 40 images: accuracies move 2.5 points per image"),
    Case("healthy_mild_skew", None, {**CUSTOM_DIGITS, "data.kwargs": {"skew": 2.3}},
         what="class 0 about 2.3× each other class: below the ratio wf calls a skew"),
]


def wf(*args: str, cwd: Path) -> tuple[int, str, str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mlflow_core", *args], cwd=cwd, capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t0


def edit_config(path: Path, edits: dict[str, Any]) -> None:
    raw = yaml.safe_load(path.read_text())
    for dotted, value in edits.items():
        section, key = dotted.split(".")
        raw.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def first_nonfinite_step(project: Path) -> int | None:
    """A plain PyTorch loop over the project's config (same seed, data order and model): the first
    step whose loss or gradient is non-finite. The ground truth for wf's detection lag."""
    import torch
    from torch import nn

    from mlflow_core.config import load_config
    from mlflow_core.training.data.loader import make_loader
    from mlflow_core.training.data.sources import build_data
    from mlflow_core.training.models import build_model
    from mlflow_core.training.optim import build_optimizer
    from mlflow_core.training.seeding import seed_everything

    cfg = load_config(project / "training_config.yaml")
    seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)
    data = build_data(cfg, project)
    seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)
    model = build_model(cfg.model, data.num_classes, data.input_shape, project)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg.training, params)
    loader = make_loader(data.train, cfg, train=True, device=torch.device("cpu"), seed=cfg.reproducibility.seed)
    criterion, step = nn.CrossEntropyLoss(), 0
    amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.training.precision)
    scaler = torch.amp.GradScaler("cpu") if cfg.training.precision == "fp16" and cfg.training.grad_scaler else None
    for _ in range(cfg.training.epochs):
        model.train()
        for x, y in loader:
            with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:  # a GradScaler skips steps with overflowing gradients: only the loss counts
                scaler.unscale_(optimizer)
            grads_ok = scaler is not None or all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)
            if not (math.isfinite(loss.item()) and grads_ok):
                return step
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            step += 1
    return None


def run_case(case: Case, root: Path, fix: bool = True) -> dict[str, Any]:
    project = root / case.name
    out: dict[str, Any] = {"case": case.name, "expected": case.expected, "what": case.what}
    code, _, err, _ = wf("init", str(project), "--example", case.example, cwd=root)
    assert code == 0, err
    shutil.copyfile(HERE / "faultlib.py", project / "faultlib.py")
    if case.data:
        case.data(project)
    edit_config(project / "training_config.yaml", case.edits)
    code, _, err, _setup_s = wf("phase", "setup", cwd=project)
    out["setup_exit"] = code
    wf("checklist", "tick", "reproducibility", "data_documented", "config_committed", cwd=project)
    code, _, err, run_s = wf("phase", "baseline", cwd=project)
    if code == 3:  # setup's data checks closed the gate: a person overrides it to see what happens
        code, _, err, run_s = wf("phase", "baseline", "--override-gate", "fault benchmark", cwd=project)
    out.update(baseline_exit=code, run_s=round(run_s, 2))
    code, stdout, err, diagnose_s = wf("diagnose", "auto", "--json", cwd=project)
    out["diagnose_s"] = round(diagnose_s, 2)
    if code != 0:
        out.update(diagnose_exit=code, error=err.strip()[-500:], top=None, findings=[])
        return out
    findings = json.loads(stdout)["findings"]
    out["findings"] = [(f["diagnostic"], f["cause"], f["confidence"], f.get("strength")) for f in findings]
    out["top"] = (findings[0]["diagnostic"], findings[0]["cause"]) if findings else None
    if case.also:
        out["also"] = list(case.also)
        out["also_found"] = any((f["diagnostic"], f["cause"]) == case.also for f in findings[1:])
    if fix and findings:
        code, stdout, err, fix_s = wf("diagnose", findings[0]["diagnostic"], "--fix", "--json", cwd=project)
        fixed = json.loads(stdout) if code == 0 else {}
        trials = fixed.get("trials") or []
        out.update(fix_s=round(fix_s, 2), fix_trials=len([t for t in trials if t.get("symptom_gone") is not None]),
                   fix_verified=next((t["label"] for t in trials if t.get("winner")), None),
                   fix_note=(fixed.get("probes") or {}).get("fix_note"))
    metrics = json.loads(next((project / "runs").glob("*/logs/metrics.json")).read_text())
    if case.expected and case.expected[0] == "nan_loss":
        out["nan_detected_step"] = (metrics.get("nonfinite") or {}).get("step")
        out["nan_first_step"] = first_nonfinite_step(project)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="case names")
    parser.add_argument("--keep", type=Path, help="keep the projects in this folder")
    parser.add_argument("--json", type=Path, help="write the per-case results here")
    parser.add_argument("--no-fix", action="store_true", help="skip `wf diagnose TOP --fix` after each diagnosis")
    args = parser.parse_args()
    cases = [c for c in FAULTS + HEALTHY if not args.only or c.name in args.only]
    root = args.keep or Path(tempfile.mkdtemp(prefix="wf-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for case in cases:
        t0 = time.perf_counter()
        result = run_case(case, root, fix=not args.no_fix)
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        results.append(result)
        print(f"{case.name:26} expected {case.expected!s:48} top {result['top']!s:48} "
              f"run {result['run_s']:5.1f}s diagnose {result['diagnose_s']:5.1f}s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    report(results)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def report(results: list[dict[str, Any]]) -> None:
    faults = [r for r in results if r["expected"]]
    healthy = [r for r in results if not r["expected"]]
    labels = [*sorted({r["expected"][0] for r in faults} | {r["top"][0] for r in results if r["top"]}), "(none)"]
    rows = sorted({r["expected"][0] for r in faults}) + (["(healthy)"] if healthy else [])
    print("\nConfusion (rows: injected fault; columns: top-1 diagnosis)")
    short = {label: label[:10] for label in labels}
    print(f"{'':22}" + "".join(f"{short[c]:>11}" for c in labels))
    for row in rows:
        members = [r for r in results if (r["expected"] or ("(healthy)",))[0] == row]
        counts = [sum(1 for r in members if (r["top"] or ("(none)",))[0] == c) for c in labels]
        print(f"{row:22}" + "".join(f"{n or '.':>11}" for n in counts))
    right = [r for r in faults if r["top"] and r["top"][0] == r["expected"][0]]
    cause = [r for r in faults if r["top"] == tuple(r["expected"])]
    alarms = [r for r in healthy if r["findings"]]
    lags = [r["nan_detected_step"] - r["nan_first_step"] for r in faults
            if r.get("nan_detected_step") is not None and r.get("nan_first_step") is not None]
    times = [r["run_s"] + r["diagnose_s"] for r in faults]
    print(f"\nTop-1 diagnosis right: {len(right)}/{len(faults)} ({len(right) / max(len(faults), 1):.0%}); "
          f"cause right: {len(cause)}/{len(faults)}")
    for r in (r for r in faults if "also" in r):
        print(f"Second fault of {r['case']}: {tuple(r['also'])} "
              f"{'listed after the first' if r['also_found'] else 'NOT listed after the first'}")
    print(f"False alarms on healthy runs: {len(alarms)}/{len(healthy)}"
          + "".join(f"\n  {r['case']}: {r['findings']}" for r in alarms))
    print(f"NaN detection lag in steps (wf's stop − the first non-finite loss or gradient in a plain loop): "
          f"{lags}; late detections: {sum(1 for lag in lags if lag > 0)} of {len(lags)}"
          + ("\n  (negative: wf stopped earlier, on a gradient norm that overflowed float32 while every "
             "gradient was still finite)" if any(lag < 0 for lag in lags) else ""))
    if times:
        print(f"Time to diagnosis (baseline run + wf diagnose auto, fresh processes): median "
              f"{statistics.median(times):.1f} s, max {max(times):.1f} s; diagnose alone median "
              f"{statistics.median(r['diagnose_s'] for r in faults):.1f} s")
    tried = [r for r in faults if "fix_trials" in r]
    if tried:
        print(f"\nFixes verified by `wf diagnose TOP --fix` trial runs: "
              f"{sum(1 for r in tried if r['fix_verified'])}/{len(tried)} faults")
        for r in tried:
            verdict = (f"verified: {r['fix_verified']}" if r["fix_verified"] else
                       f"{r['fix_trials']} trials, none verified" if r["fix_trials"] else "no config fix (data/code)")
            print(f"  {r['case']:26} {verdict}")
    wrong = [r for r in faults if r not in cause]
    for r in wrong:
        print(f"  wrong: {r['case']}: expected {r['expected']}, got {r['findings'][:3] or r.get('error')}")


if __name__ == "__main__":
    sys.exit(main())
