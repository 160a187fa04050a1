"""Phase 5: train the chosen config for the final budget, evaluate once on the held-out test split,
export the model, verify every export by reloading it, and gather a reproducibility bundle.

The test split is touched here and nowhere else: the trainer, setup's checks of the model and the
fix trials read only train and val. Each evaluation is recorded in the history (`test_evaluated`),
so a second finalization says that the test split has been seen before.
"""

from __future__ import annotations

import io
import json
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from mlflow_core.atomic import atomic_write_bytes, atomic_write_text
from mlflow_core.config.loader import load_config
from mlflow_core.config.schema import WorkflowConfig, with_changes
from mlflow_core.environment import capture_environment
from mlflow_core.errors import DataError, UserInputError
from mlflow_core.runners import RunContext, RunOutput, SubRunInterrupted, fit_or_continue
from mlflow_core.runners.baseline import run_proof
from mlflow_core.runners.plans import about
from mlflow_core.runners.registry import register_export
from mlflow_core.training.augment import with_augmentation
from mlflow_core.training.checkpoint import load_checkpoint, save_checkpoint
from mlflow_core.training.data.datasets import DataBundle
from mlflow_core.training.data.loader import collate_batches
from mlflow_core.training.data.sources import build_data
from mlflow_core.training.evaluation import classification_metrics, predict_with_tta, segmentation_metrics
from mlflow_core.training.folds import ensemble_log_probabilities, fold_data, split_folds
from mlflow_core.training.models import build_model
from mlflow_core.training.optim import resolve_device
from mlflow_core.workflow.evidence import file_sha256
from mlflow_core.workflow.facts import FinalizationFacts
from mlflow_core.workflow.state import load_state


def run_finalization(ctx: RunContext) -> RunOutput:
    """Train each member (a seed, or a fold and a seed), evaluate it once on the test split, then
    summarise, ensemble, and export the first seed's model with its bundle."""
    cfg, root = ctx.cfg, ctx.project.root
    fin = cfg.finalization
    data = _test_ready_data(ctx)
    state = load_state(ctx.project)
    seen_before = [getattr(e, "run_id", None) for e in state.history if e.event == "test_evaluated"]
    epochs = fin.epochs or cfg.training.epochs
    seeds = [cfg.reproducibility.seed + i for i in range(fin.seeds)]
    # the members: one per seed, or with cross-validation one per fold and seed (e.g. 5 folds × 3 seeds)
    folds, crossval = fin.folds, None
    if folds:
        _, samples, stratified, fold_val = split_folds(cfg, root, folds)
        crossval = {"folds": folds, "stratified": stratified, "samples": len(samples),
                    "fold_sizes": [len(f) for f in fold_val]}
    results, models, member_logits, targets = [], [], [], None
    members = [(fold, seed) for fold in (range(folds) if folds else [None]) for seed in seeds]
    ctx.on_message(f"Plan: {len(members)} model{'s' * (len(members) != 1)} (seed{'s' * (len(seeds) != 1)} "
                   f"{', '.join(map(str, seeds))}" + (f" × {folds} folds" if folds else "")
                   + f") × {epochs} epochs, each evaluated once on the test split ({len(data.test):,} samples), "
                   f"then the export checked; {len(members) * epochs:,} epochs" + about(ctx.project, len(members) * epochs)
                   + ".")
    for fold, seed in members:
        try:
            entry, model, logits, member_targets = _member(ctx, data, fold, seed, epochs)
        except SubRunInterrupted as stop:  # nothing evaluated yet: the test split stays unseen
            return stop.output(ctx)
        results.append(entry)
        if model is not None:
            models.append((seed, model))
            member_logits.append(logits)
            targets = member_targets
    evaluated = [r for r in results if "test" in r]
    facts: dict[str, Any] = {
        "run_dir": ctx.project.relative(ctx.run_dir), "epochs": epochs, "seeds": results,
        "config_sha256": ctx.config_sha256, "config": cfg.model_dump(mode="json"),
        "test_split": {"samples": len(data.test), "source": data.source, "evaluated_before_by": seen_before},
        "data": {"train": len(data.train), "val": len(data.val), "test": len(data.test),
                 "num_classes": data.num_classes, "input_shape": list(data.input_shape),
                 "normalization": data.normalization, "class_names": data.class_names},
        "optimized_config_matches": _matches_optimized(ctx),
    }
    if not evaluated:
        return RunOutput("failed_checks", FinalizationFacts.model_validate(facts),
                         notes=["No final run completed: nothing was evaluated or exported."])
    facts.update(_summaries(cfg, evaluated, crossval, member_logits, targets, data.num_classes))
    _ship(ctx, data, models[0], facts)  # the shipped model: the first seed's
    return RunOutput("completed", FinalizationFacts.model_validate(facts), events=[(
        "test_evaluated", {"run_id": ctx.run_id, "samples": len(data.test), "seeds": [r["seed"] for r in evaluated]})])


def _test_ready_data(ctx: RunContext) -> DataBundle:
    """The data, with the held-out test split finalization evaluates on once."""
    cfg = ctx.cfg
    data = with_augmentation(build_data(cfg, ctx.project.root), cfg.augmentation)  # evaluation views at the trained size
    if data.test is None or len(data.test) == 0:
        raise DataError(f"{ctx.project.config_path}: finalization needs a held-out test split, and data source "
                        f"'{cfg.data.source}' has none: set data.test_fraction (digits), add a test/ folder "
                        "(npz, imagefolder) or return a 'test' dataset (custom). No earlier phase may use it.")
    if cfg.finalization.tta and len(data.input_shape) != 3:
        raise UserInputError(f"{ctx.project.config_path}: finalization.tta flips images (channels, height, width); "
                             f"this data's samples have shape {list(data.input_shape)}.")
    return data


def _member(ctx: RunContext, data: DataBundle, fold: int | None, seed: int,
            epochs: int) -> tuple[dict[str, Any], Any, Any, Any]:
    """One member trained (or continued), then its checkpoint that validation chose evaluated on the
    test split: (its entry in the facts, the model, its test logits, the targets); no model when it
    did not complete."""
    cfg, say, root, fin = ctx.cfg, ctx.on_message, ctx.project.root, ctx.cfg.finalization
    name = f"seed_{seed}" if fold is None else f"fold_{fold}_seed_{seed}"
    say(f"Final training, {name.replace('_', ' ')}, {epochs} epochs")
    run_cfg = with_changes(cfg, {"reproducibility.seed": seed, "training.epochs": epochs})
    run_dir = ctx.run_dir / name
    trained = fit_or_continue(ctx, run_cfg, run_dir, f"{ctx.run_id}/{name}", phase="finalization",
                              data=data if fold is None else fold_data(cfg, root, fin.folds, fold),
                              data_spec=None if fold is None else {"folds": fin.folds, "fold": fold})
    entry = {"seed": seed, **({"fold": fold} if fold is not None else {}), "status": trained.status}
    if trained.status not in ("completed", "early_stopped"):
        return {**entry, "stop_reason": trained.record.stop_reason}, None, None, None
    model = trained.model
    best = trained.record.checkpoints.best
    if best:  # evaluate the checkpoint that validation chose, not the last epoch's weights
        model.load_state_dict(load_checkpoint(run_dir / best.path)["model"])
    say(f"Evaluating {name.replace('_', ' ')} on the test split ({len(data.test)} samples)")
    score = segmentation_metrics if cfg.task == "segmentation" else classification_metrics
    plain, augmented, targets = predict_with_tta(model, data.test, run_cfg, resolve_device(cfg.training.device),
                                                 fin.tta)
    logits = augmented if augmented is not None else plain
    entry = {**entry, "run_dir": ctx.project.relative(run_dir), "val_best": trained.metrics.get("best"),
             "test": score(logits, targets, data.num_classes),
             "proof": run_proof(ctx, run_dir, trained.record).model_dump(mode="json")}
    if augmented is not None:  # what the flips add, from the same models and test split
        entry["test_without_tta"] = score(plain, targets, data.num_classes)
    return entry, model, logits, targets


def _summaries(cfg: WorkflowConfig, evaluated: list[dict[str, Any]], crossval: dict[str, Any] | None,
               member_logits: list[Any], targets: Any, num_classes: int) -> dict[str, Any]:
    """The test metrics over the members (with and without TTA), the folds' validation, the ensemble."""
    fin = cfg.finalization
    out: dict[str, Any] = {"summary": summarize([r["test"] for r in evaluated])}
    if fin.tta:
        out["tta"] = {"views": ["identity", *fin.tta],
                      "summary_without": summarize([r["test_without_tta"] for r in evaluated])}
    if crossval is not None:
        values = [r["val_best"]["value"] for r in evaluated if r.get("val_best")]
        crossval["val_best"] = {"metric": cfg.validation.metric, "values": values,
                                "mean": statistics.mean(values) if values else None,
                                "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        out["crossval"] = crossval
    if fin.ensemble and len(member_logits) > 1:  # the members' averaged class probabilities
        score = segmentation_metrics if cfg.task == "segmentation" else classification_metrics
        out["ensemble"] = {"members": len(member_logits),
                           "test": score(ensemble_log_probabilities(member_logits), targets, num_classes)}
    return out


def _ship(ctx: RunContext, data: DataBundle, member: tuple[int, Any], facts: dict[str, Any]) -> None:
    """Export the model (state dict, program, ONNX as configured), write its bundle (which describes
    the facts so far) and register it; each recorded in `facts`."""
    cfg, fin = ctx.cfg, ctx.cfg.finalization
    seed, model = member
    device = resolve_device(cfg.training.device)
    export_dir = ctx.run_dir / "export" if ctx.smoke else ctx.project.root / "export"
    batch = next(iter(torch.utils.data.DataLoader(data.test, batch_size=min(8, len(data.test)),
                                                  collate_fn=collate_batches)))[0].to(device)
    facts["exported_seed"] = seed
    facts["exports"] = export_model(model.to(device).eval(), cfg, data, export_dir, batch, fin.export,
                                    fin.export_tolerance, ctx)
    facts["bundle"] = write_bundle(ctx, facts, export_dir)
    facts["registered"] = register_export(ctx, model, batch, facts)  # monitoring.mlflow: the registry


def summarize(tests: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key in ("accuracy", "top5_accuracy", "macro_f1", "mcc", "mean_iou", "nll", "ece"):
        values = [t[key] for t in tests if key in t]
        if values:
            out[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "values": values}
    return out


def _matches_optimized(ctx: RunContext) -> bool | None:
    """Does the config being finalized carry the optimized config's settings? None: no optimization ran."""
    path = ctx.project.root / "configs" / "optimized_config.yaml"
    if not path.is_file():
        return None
    try:
        optimized = load_config(path).model_dump(mode="json")
    except Exception:  # edited into something invalid: it cannot match
        return False
    ours = ctx.cfg.model_dump(mode="json")
    return all(optimized[k] == ours[k] for k in ("data", "model", "training"))


def export_model(model: torch.nn.Module, cfg: WorkflowConfig, data: DataBundle, export_dir: Path,
                 batch: torch.Tensor, kinds: list[str], tolerance: float, ctx: RunContext) -> list[dict[str, Any]]:
    """Write each export, reload it, and compare its logits with the trained model's on `batch`."""
    export_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        expected = model(batch).float()
    out = []
    for kind in kinds:
        entry: dict[str, Any] = {"kind": kind}
        try:
            path, reloaded = _EXPORTERS[kind](model, cfg, data, export_dir, batch, ctx)
            entry.update(path=ctx.project.relative(path), sha256=file_sha256(path), bytes=path.stat().st_size)
            if reloaded is None:
                entry.update(verified=False, detail="written; not verified (its runtime is not installed)")
            else:
                with torch.no_grad():
                    diff = float((reloaded(batch).float() - expected).abs().max())
                entry.update(max_abs_diff=diff, verified=diff <= tolerance,
                             detail=f"reloaded; logits differ by at most {diff:.3g} (tolerance {tolerance:g}) "
                             f"on {len(batch)} test samples")
        except Exception as exc:  # an exporter that cannot handle this model: say so, keep the others
            entry.update(verified=False, detail=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        ctx.on_message(f"Export {kind}: {entry['detail']}")
        out.append(entry)
    return out


def _export_state_dict(model, cfg, data, export_dir, batch, ctx):
    path = export_dir / "model_state_dict.pt"
    save_checkpoint(path, {"kind": "wf_export", "model": model.state_dict(), "config": cfg.model_dump(mode="json"),
                           "num_classes": data.num_classes, "input_shape": list(data.input_shape),
                           "normalization": data.normalization})
    loaded = load_checkpoint(path)  # weights_only=True, as every consumer should load it
    rebuilt = build_model(cfg.model, loaded["num_classes"], tuple(loaded["input_shape"]), ctx.project.root)
    rebuilt.load_state_dict(loaded["model"])
    return path, rebuilt.to(batch.device).eval()


def _export_program(model, cfg, data, export_dir, batch, ctx):
    from torch.export import Dim, export, load, save

    program = export(model, (batch,), dynamic_shapes=({0: Dim("batch", min=1, max=4096)},))
    buf = io.BytesIO()
    save(program, buf)
    path = export_dir / "model.pt2"
    atomic_write_bytes(path, buf.getvalue())
    return path, load(path).module()


def _export_onnx(model, cfg, data, export_dir, batch, ctx):
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:  # reported as the export's outcome; the other exports go on
        raise ImportError(f"{' and '.join(missing)} not installed (pip install 'wf-phases[onnx]')")
    from torch.export import Dim

    path = export_dir / "model.onnx"
    tmp = export_dir / ".model.onnx.tmp"  # the exporter writes the file itself: durable before it replaces
    torch.onnx.export(model, (batch,), str(tmp), input_names=["input"], output_names=["logits"], dynamo=True,
                      dynamic_shapes=({0: Dim("batch", min=1, max=4096)},), verbose=False)
    with open(tmp, "rb") as written:
        os.fsync(written.fileno())
    os.replace(tmp, path)
    try:
        import onnxruntime as ort
    except ImportError:
        return path, None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return path, lambda x: torch.from_numpy(session.run(None, {"input": x.cpu().numpy()})[0]).to(x.device)


_EXPORTERS = {"state_dict": _export_state_dict, "torch_export": _export_program, "onnx": _export_onnx}


def write_bundle(ctx: RunContext, facts: dict[str, Any], export_dir: Path) -> dict[str, Any]:
    """export/: the resolved config and a manifest with what reproduces the run and every checksum."""
    import yaml


    config_path = export_dir / "config.yaml"
    atomic_write_text(config_path, yaml.safe_dump(ctx.cfg.model_dump(mode="json"), sort_keys=False))
    state = load_state(ctx.project)
    files = {ctx.project.relative(config_path): file_sha256(config_path)}
    files.update({e["path"]: e["sha256"] for e in facts.get("exports", []) if e.get("path")})
    for rel in ("training_config.yaml", "reports/environment.json"):
        if (ctx.project.root / rel).is_file():
            files[rel] = file_sha256(ctx.project.root / rel)
    manifest = {
        "run_id": ctx.run_id, "config_sha256": ctx.config_sha256, "seeds": [r["seed"] for r in facts["seeds"]],
        "epochs": facts["epochs"], "data": facts["data"], "environment": capture_environment(ctx.project.root),
        # what a deployed model's output index means: class id → name (ids as strings when unnamed)
        "classes": {str(i): name for i, name in enumerate(facts["data"].get("class_names")
                                                          or [str(i) for i in range(facts["data"]["num_classes"])])},
        "phases": [{"run_id": r.run_id, "phase": r.phase, "status": r.status, "passed": r.passed}
                   for r in state.runs if r.finished_at],
        "overrides": [e.model_dump(mode="json") for e in state.overrides()],
        "files": files,
        "reproduce": ["pip install -e '.[dev]'", "wf config validate", "wf phase finalization"],
    }
    path = export_dir / "manifest.json"
    atomic_write_text(path, json.dumps(manifest, indent=1, default=str))
    return {"path": ctx.project.relative(path), "sha256": file_sha256(path), "files": len(files)}
