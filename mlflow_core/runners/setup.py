"""Phase 1: validate, document the environment, fix and verify seeds, check data and model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from mlflow_core.atomic import atomic_write_json
from mlflow_core.environment import capture_environment
from mlflow_core.errors import DataError, UserInputError
from mlflow_core.monitoring.nvml import GpuSampler
from mlflow_core.reports.phase_reports import ENVIRONMENT
from mlflow_core.runners import RunContext, RunOutput
from mlflow_core.training.checkpoint import weights_sha256
from mlflow_core.training.data.loader import make_loader
from mlflow_core.training.data.packed import PackedDataset
from mlflow_core.training.data.sources import build_data, files_dataset, pack_data
from mlflow_core.training.data_checks import check_data, dataset_digests
from mlflow_core.training.device_batches import device_view
from mlflow_core.training.models import build_model, count_parameters, load_initial_weights, project_file
from mlflow_core.training.optim import resolve_device
from mlflow_core.training.seeding import SEEDED, seed_everything
from mlflow_core.training.trainer import Trainer
from mlflow_core.workflow import datafiles
from mlflow_core.workflow.facts import SetupFacts


def run_setup(ctx: RunContext) -> RunOutput:
    cfg, project = ctx.cfg, ctx.project
    facts: dict[str, Any] = {"config_sha256": ctx.config_sha256, "config_valid": True}

    ctx.on_message("Documenting the environment")
    env = capture_environment(project.root, GpuSampler())
    # into the run's folder: reports/environment.md is written with the setup report, when the run
    # has an outcome (a failed setup leaves the passing one's report as it was)
    atomic_write_json(ctx.run_dir / ENVIRONMENT, env)
    gpus = ", ".join(g["name"] for g in env["gpus"]) or "no NVIDIA GPU"
    facts["environment"] = {"report": None, "summary": f"Python {env['python']}, torch {env['torch']}, "
                            f"{env['cpu_count']} CPU cores, {env['ram_gib']} GiB RAM, {gpus}"}

    seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)
    facts["seeds"] = {"seed": cfg.reproducibility.seed, "deterministic": cfg.reproducibility.deterministic,
                      "seeded": SEEDED}

    if cfg.data.source in ("npz", "imagefolder", "csv") and cfg.data.pack != "off" and not ctx.smoke:
        ctx.on_message("Packing the data (one memory-mapped array per split; data.pack)")
        try:
            facts["data_pack"] = pack_data(cfg, project.root, ctx.on_message)
        except DataError as exc:
            if cfg.data.pack == "on":
                raise
            # auto: the files are read as they are, and the data checks below say what is wrong with them
            ctx.on_message(f"Not packed ({exc.message}); the files are read one by one")
    ctx.on_message("Checking the data pipeline")
    bundle = build_data(cfg, project.root)  # a missing or unreadable dataset is bad input: exit 2
    facts["data"] = check_setup_data(cfg, project.root, bundle)
    if cfg.data.source == "custom":  # no files to hash: a fixed sample of items stands for the content
        facts["data"]["digests"] = dataset_digests(bundle)

    ctx.on_message("Running the model's forward pass")
    facts["model"] = _check_model(ctx, bundle)

    ctx.on_message(f"Verifying reproducibility: {cfg.reproducibility.verify_steps} steps, twice")
    facts["reproducibility"] = _verify_reproducibility(ctx, bundle)

    if facts["model"]["ok"] and not ctx.smoke:
        ctx.on_message("Measuring the loader alone against the model alone")
        facts["throughput"] = measure_throughput(ctx, bundle)

    checked = SetupFacts.model_validate(facts)
    ok = not checked.data.problems and checked.model.ok and checked.reproducibility.passed
    return RunOutput("completed" if ok else "failed_checks", checked)


def check_setup_data(cfg: Any, project_root: Path, bundle: Any) -> dict[str, Any]:
    """Setup's data checks (`wf verify` does them again): the decoded samples, and every file."""
    data = check_data(bundle, cfg.training.batch_size)
    _files_in_two_splits(cfg, project_root, data)
    return data


def _files_in_two_splits(cfg: Any, project_root: Path, data: dict[str, Any]) -> None:
    """Every file of every split compared by sha256, from the files setup's fingerprint just hashed
    (their stat cache makes this a directory walk, cheaper than reading back the per-file listing):
    the decoded-sample check above reads at most MAX_SCAN samples per split, this one misses no exact
    copy of a file."""
    if cfg.data.source == "csv":  # a CSV's rows may share files on purpose (masks)
        return
    manifest = datafiles.build_manifest(cfg, project_root, datafiles.stat_cache(project_root), describe=False)
    if manifest is None:  # not files (digits, custom)
        return
    pairs = datafiles.files_in_two_splits(manifest)
    data["file_overlaps"] = {pair: len(files) for pair, files in pairs.items()}
    for pair, files in pairs.items():
        if len(files) > data["overlaps"].get(pair, 0):  # more than the decoded samples' check already named
            first, second = pair.split("_")
            data["problems"].append(f"{len(files)} {second} files are copies of {first} files (identical sha256; "
                                    f"e.g. {second}/{files[0][0]} = {first}/{files[0][1]})")


def _check_model(ctx: RunContext, bundle) -> dict[str, Any]:
    cfg = ctx.cfg
    weights: dict[str, Any] = {}
    try:
        model = build_model(cfg.model, bundle.num_classes, bundle.input_shape, ctx.project.root, record=weights)
        if cfg.model.init_from:  # what fine-tuning will start from: loaded, adapted, kept fresh
            weights["init_from"] = load_initial_weights(model, project_file(ctx.project.root, cfg.model.init_from),
                                                        cfg.model.init_from)
        device = resolve_device(cfg.training.device)
        model.to(device).eval()
        batch = torch.stack([torch.as_tensor(bundle.train[i][0]) for i in range(min(2, len(bundle.train)))])
        with torch.no_grad():
            out = model(batch.to(device))
    except (DataError, UserInputError):  # a model name, weights or kwargs that do not fit: bad input, exit 2
        raise
    except Exception as exc:  # a user's model that fails its forward pass is a finding, not a crash
        return {"ok": False, "name": cfg.model.label, "error": f"{type(exc).__name__}: {exc}"}
    expected = ((batch.shape[0], bundle.num_classes, *batch.shape[2:]) if cfg.task == "segmentation"
                else (batch.shape[0], bundle.num_classes))  # per-pixel logits, or one row per sample
    ok = tuple(out.shape) == expected
    return {"ok": ok, "name": cfg.model.label, "parameters": count_parameters(model),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "input_shape": list(batch.shape), "output_shape": list(out.shape), "device": str(device),
            "weights": weights or None,
            **({} if ok else {"error": f"output shape {list(out.shape)}, expected {list(expected)}"})}


def _verify_reproducibility(ctx: RunContext, bundle) -> dict[str, Any]:
    steps = ctx.cfg.reproducibility.verify_steps
    weights = []
    for _ in range(2):
        result = Trainer(ctx.cfg, ctx.project.root, None, run_id=f"{ctx.run_id}-verify", phase="setup",
                         data=bundle, short_check=True).fit(max_steps=steps)
        weights.append({k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()})
    # A diverging config is reproducible too if both runs diverge the same way: NaN equals NaN here.
    identical = all(torch.equal(weights[0][k], weights[1][k]) if not weights[0][k].is_floating_point() else
                    torch.allclose(weights[0][k], weights[1][k], rtol=0, atol=0, equal_nan=True) for k in weights[0])
    max_diff = max(((weights[0][k].double() - weights[1][k].double()).nan_to_num(0.0).abs().max().item()
                    for k in weights[0] if weights[0][k].is_floating_point()), default=0.0)
    device = str(resolve_device(ctx.cfg.training.device))
    # On CUDA some kernels are not bit-reproducible even in deterministic mode; state the difference.
    passed = identical or (device.startswith("cuda") and max_diff <= 1e-5)
    return {"steps": steps, "device": device, "identical": identical, "max_abs_diff": max_diff, "passed": passed,
            "precision": result.metrics["precision"], "weights_sha256": weights_sha256(weights[0])}


THROUGHPUT_SECONDS, THROUGHPUT_BATCHES = 0.25, 3  # each side: whichever comes first, after a warm-up batch


def _innermost(dataset: Any) -> Any:
    while "base" in vars(dataset):  # NormalizedDataset, AugmentedDataset
        dataset = vars(dataset)["base"]
    return dataset


def _rate(batches: Any, run: Any = None) -> float:
    """Samples/s over up to THROUGHPUT_BATCHES batches or THROUGHPUT_SECONDS, the first not counted."""
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        return 0.0
    if run:
        run(first)
    seen, t0 = 0, time.perf_counter()
    for i, batch in enumerate(iterator):
        if run:
            run(batch)
        seen += batch[0].shape[0]
        if i + 1 >= THROUGHPUT_BATCHES or time.perf_counter() - t0 > THROUGHPUT_SECONDS:
            break
    return seen / max(time.perf_counter() - t0, 1e-9)


def measure_throughput(ctx: RunContext, bundle: Any) -> dict[str, Any]:
    """The training loader alone (the path the run will read: its files, or their pack, and for NPZ
    data the other path too) against the model alone (forward and backward on one batch on the
    training device): which of the two bounds the run, said with what to do about it."""
    from itertools import repeat

    cfg, root = ctx.cfg, ctx.project.root
    device = resolve_device(cfg.training.device)
    seed = cfg.reproducibility.seed
    in_use = _innermost(bundle.train)
    packed = isinstance(in_use, PackedDataset)
    path = "packed" if packed else {"npz": "files", "imagefolder": "files", "csv": "files", "digits": "memory"}.get(cfg.data.source,
                                                                                                   "custom")
    loaders = {path: bundle.train}
    if packed:  # what the files alone would give
        loaders["files"] = files_dataset(cfg, root, "train")
    rates = {name: round(_rate(make_loader(ds, cfg, train=True, device=device, seed=seed)), 1)
             for name, ds in loaders.items()}
    view = device_view(bundle.train) if packed else None
    if view is not None:  # as the trainer reads a pack: as stored, converted and normalised on the device
        stored, prep = view

        def arrive(batch: Any) -> None:
            prep(batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True))
            if device.type == "cuda":
                torch.cuda.synchronize()
        loader = make_loader(stored, cfg, train=True, device=device, seed=seed)
        rates[path] = round(_rate(loader, arrive), 1)
    model = build_model(cfg.model, bundle.num_classes, bundle.input_shape, root).to(device).train()
    x, y = next(iter(make_loader(bundle.train, cfg, train=True, device=device, seed=seed)))
    x, y = x.to(device), y.to(device)

    def step(_batch: Any) -> None:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
    model_rate = round(_rate(repeat((x, y), THROUGHPUT_BATCHES + 1), step), 1)
    loader_rate = rates[path]
    bound = "data" if loader_rate < model_rate else "model"
    if bound == "model":
        advice = "the loader keeps up with the model: the data path is not what limits this run"
    elif cfg.data.source in ("npz", "imagefolder", "csv") and not packed:
        advice = "the loader is slower than the model: pack the data (`wf data pack`, data.pack: auto or on)"
    else:
        advice = "the loader is slower than the model: raise data.num_workers"
    return {"device": str(device), "batch_size": cfg.training.batch_size, "loader": rates, "path": path,
            "model": model_rate, "bound": bound, "advice": advice}
