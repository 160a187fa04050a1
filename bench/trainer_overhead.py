"""The shared trainer against a hand-written PyTorch loop on the same model, data and seed.

Prints the wall-time ratio per training epoch with all monitoring on (goal ≤ 1.01) and whether the
final weights are identical (goal: identical). Both loops validate every epoch and write no files,
so the difference is the trainer's bookkeeping: loss checks, gradient norms, detectors, timing.

    python bench/trainer_overhead.py [--epochs 3] [--repeats 5] [--device cpu|cuda] [--model simple_cnn]
                                     [--data digits|patches|packed --size 64]

`--data packed` (the default) is the 6-band Sentinel-2 patch workload as a project holds it: .npz
files, as `wf init --example patches` writes them, read through their pack (`wf data pack`) by both
loops. `--data patches` is the same patches generated in memory, so that no reading at all dilutes
the ratio. `--data digits` (8×8 images, 45 steps an epoch) is the worst case: a step is so small that
the trainer's per-step gradient-norm check (one pass over the gradients) is about 1 % of it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from mlflow_core.config import load_config_text
from mlflow_core.training.data.datasets import DataBundle
from mlflow_core.training.data.loader import make_loader
from mlflow_core.training.data.sources import build_data
from mlflow_core.training.models import build_model
from mlflow_core.training.seeding import seed_everything
from mlflow_core.training.trainer import Trainer


def config(epochs: int, device: str, model: str, batch: int):
    return load_config_text(f"""
training: {{epochs: {epochs}, batch_size: {batch}, device: {device}}}
model: {{name: {model}}}
early_stopping: {{enabled: false}}
checkpointing: {{save_best: false, save_last: false, checkpoint_every_n_epochs: 0}}
""", "bench")


def patch_data(size: int, train: int = 320, val: int = 64, bands: int = 6, classes: int = 4) -> DataBundle:
    """Sentinel-2-shaped patches in memory: each class a spectral signature under noise and texture."""
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    signatures = torch.rand(classes, bands, generator=g) * 0.4 + 0.05

    def split(n: int) -> TensorDataset:
        labels = torch.arange(n) % classes
        x = (signatures[labels][:, :, None, None] + 0.05 * torch.randn(n, 1, size, size, generator=g)
             + 0.08 * torch.randn(n, bands, size, size, generator=g))
        return TensorDataset(x, labels)

    return DataBundle(split(train), split(val), None, classes, (bands, size, size),
                      f"generated {bands}-band {size}×{size} patches")


def packed_data(size: int, root: Path, train: int = 320, val: int = 64) -> DataBundle:
    """The same workload on disk as `wf init --example patches` writes it (one .npz per patch), read
    through its packs as `data.pack` does: one memory-mapped gather per batch, in both loops."""
    from mlflow_core.training.data.packed import PackedDataset
    from mlflow_core.workflow.datafiles import StatCache
    from mlflow_core.workflow.packs import build_pack
    from mlflow_core.workflow.scaffold import write_patches

    folder = root / "data" / "patches"
    write_patches(folder, size=size, train=train, val=val, test=0)
    cache = StatCache(root / "stat.sqlite")
    packs = {s: build_pack(root, folder / s, s, cache, image_key="image", target_key="label")[0]
             for s in ("train", "val")}
    return DataBundle(PackedDataset(packs["train"]), PackedDataset(packs["val"]), None, 4, (6, size, size),
                      f"packed 6-band {size}×{size} patches ({train} train)")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def hand_loop(cfg, root: Path, data, after_epoch=None):
    """What a person writes by hand: nanoGPT-style, nothing extra. `after_epoch()`: called after each
    epoch's validation, outside the timing (bench/peer.py interleaves the contenders there)."""
    seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)
    device = torch.device(cfg.training.device)
    seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)
    model = build_model(cfg.model, data.num_classes, data.input_shape, root).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.training.learning_rate)
    criterion = nn.CrossEntropyLoss()
    train = make_loader(data.train, cfg, train=True, device=device, seed=cfg.reproducibility.seed)
    val = make_loader(data.val, cfg, train=False, device=device, seed=cfg.reproducibility.seed)
    epoch_times = []
    for _ in range(cfg.training.epochs):
        sync(device)
        t0 = time.perf_counter()
        model.train()
        for x, y in train:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        epoch_times.append(time.perf_counter() - t0)
        validate(model, val, device)
        if after_epoch is not None:
            after_epoch()
    return epoch_times, model.state_dict()


def validate(model: nn.Module, val, device: torch.device) -> float:
    model.eval()
    correct = torch.zeros((), device=device)
    with torch.no_grad():
        for x, y in val:
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(1) == y).sum()
    return correct.item()


def wf_loop(cfg, root: Path, data, after_epoch=None):
    """The trainer times each epoch's training loop itself (`duration_s`, validation excluded).
    `after_epoch()`: called at each epoch's end, after validation (its progress event)."""
    on_progress = None if after_epoch is None else (lambda event: after_epoch() if event.stage == "val" else None)
    result = Trainer(cfg, root, None, data=data, on_progress=on_progress).fit()
    return [e["duration_s"] for e in result.metrics["epochs"]], result.model.state_dict()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="simple_cnn")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--data", choices=("digits", "patches", "packed"), default="packed",
                    help="packed (default): the 6-band Sentinel-2 patch workload written as .npz files and read "
                    "through their pack, as `data.pack` reads it; patches: the same patches in memory; digits: the "
                    "worst case, 8×8 images")
    ap.add_argument("--size", type=int, default=64, help="patches: height and width")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp())
    cfg = config(args.epochs, args.device, args.model, args.batch)
    data = (build_data(cfg, root) if args.data == "digits" else packed_data(args.size, root) if args.data == "packed"
            else patch_data(args.size))
    hand_loop(cfg, root, data)  # warm-up: allocator, kernels, thread pools
    ratios, hand_times, wf_times = [], [], []
    identical = True
    cpu_ratios = []
    for _ in range(args.repeats):  # alternate so drift hits both alike
        c0 = time.process_time()
        t_hand, w_hand = hand_loop(cfg, root, data)
        c1 = time.process_time()
        t_wf, w_wf = wf_loop(cfg, root, data)
        cpu_ratios.append((time.process_time() - c1) / (c1 - c0))
        identical &= all(torch.equal(w_hand[k].cpu(), w_wf[k].cpu()) for k in w_hand)
        hand_times += t_hand
        wf_times += t_wf
        ratios += [w / h for w, h in zip(t_wf, t_hand)]  # epoch by epoch: same data order, same work
    steps = len(make_loader(data.train, cfg, train=True, device=torch.device(args.device), seed=0))  # per epoch
    print(f"data {data.source}; device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model}, "
          f"batch {args.batch}, {args.epochs} epochs × {steps} steps, {args.repeats} repeats (training loop only)")
    print(f"hand-written loop: median {statistics.median(hand_times) * 1e3 / steps:.3f} ms/step")
    print(f"wf trainer:        median {statistics.median(wf_times) * 1e3 / steps:.3f} ms/step")
    print(f"ratio of the median step times: {statistics.median(wf_times) / statistics.median(hand_times):.3f}")
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(f"ratio wf / hand per epoch: median {statistics.median(ratios):.3f}  (quartiles {q[0]:.3f}–{q[2]:.3f}, "
          f"{len(ratios)} epoch pairs); goal ≤ 1.01")
    if args.device == "cpu":
        # CPU time of the whole run (set-up, training, validation) is less exposed than wall time to
        # the other tenants of a shared machine, though not to their cache and memory traffic
        q = statistics.quantiles(cpu_ratios, n=4) if len(cpu_ratios) > 1 else [cpu_ratios[0]] * 3
        print(f"ratio wf / hand, process CPU time of whole runs: median {statistics.median(cpu_ratios):.3f}  "
              f"(quartiles {q[0]:.3f}–{q[2]:.3f}, {len(cpu_ratios)} run pairs)")
    print(f"final weights identical: {identical}")


if __name__ == "__main__":
    main()
