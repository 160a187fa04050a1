"""wf's trainer against a hand-written loop and PyTorch Lightning (when installed), on the same data,
model, optimizer and seed, interleaved in rounds.

Run one after another, the three differ by up to ±10 % from run to run on a shared machine, which
hides whether wf costs anything over the loop it wraps. Here each round trains every contender
afresh, interleaved epoch by epoch (each in its own thread, one at a time, handing on after every
epoch), in an order that rotates from round to round. A contender's figure for the round is its
median epoch time over epochs 2..N (the training loop only: validation, set-up and the first epoch's
warm-up excluded); the ratios to the hand-written loop are taken within a round and epoch by epoch,
so that a slow minute of the machine hits all three alike. Medians are printed with their spread.

Beside the time, the reads of a device value back to the host per training step, counted with
training/host_reads.py over one epoch of each (torch's own host-side reads left out): on a GPU each
one waits for the device.

    python bench/peer.py [--data fashion|digits|patches|packed] [--rounds 5] [--epochs 3] [--batch 64]
                         [--device cpu|cuda] [--model simple_cnn] [--threads N]

`--data fashion` (the default) is Fashion-MNIST's shape, generated: 20,000 single-channel 28×28 training
images in 10 classes (a class signature under noise), 2,000 for validation, and a two-convolution CNN
(`--channels 32,64`); no network is needed. On 2 CPU cores a round takes about two minutes:
`--train 8000` for a quicker look.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from trainer_overhead import config, hand_loop, packed_data, patch_data, sync, wf_loop

from mlflow_core.training.data.loader import make_loader
from mlflow_core.training.data.sources import build_data
from mlflow_core.training.host_reads import HostReads
from mlflow_core.training.models import build_model
from mlflow_core.training.seeding import rng_state, seed_everything, set_rng_state
from mlflow_core.training.trainer import Trainer


def lightning_loop(cfg, root: Path, data, after_epoch=None) -> tuple[list[float], dict[str, Any]] | None:
    """The same model, optimizer, loss and loader under PyTorch Lightning, as its docs write it: no
    logger, checkpointing, progress bar or validation (none of them is timed in the other two)."""
    try:
        import lightning as L
    except ImportError:
        return None
    seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)
    device = torch.device(cfg.training.device)
    seed_everything(cfg.reproducibility.seed, cfg.reproducibility.deterministic)
    model = build_model(cfg.model, data.num_classes, data.input_shape, root)
    lr = cfg.training.learning_rate

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model, self.criterion = model, nn.CrossEntropyLoss()

        def training_step(self, batch, _index):
            x, y = batch
            return self.criterion(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=lr)

    times: list[float] = []

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            sync(device)
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            sync(device)
            times.append(time.perf_counter() - self.t0)
            if after_epoch is not None:
                after_epoch()

    train = make_loader(data.train, cfg, train=True, device=device, seed=cfg.reproducibility.seed)
    trainer = L.Trainer(accelerator=device.type, devices=1, max_epochs=cfg.training.epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[EpochTimer()])
    trainer.fit(Module(), train_dataloaders=train)
    return times, model.state_dict()


CONTENDERS = {"hand-written loop": hand_loop, "Lightning": lightning_loop, "wf": wf_loop}


class Baton:
    """Epoch-level interleaving: each contender trains in its own thread, one at a time, handing the
    baton on after every epoch (outside its timing), so that epoch k of each runs within seconds of
    the others' and a slow minute of a shared machine hits all three alike. Each keeps its own random
    state across the hand-overs: the final weights stay comparable."""

    def __init__(self, names: list[str]):
        self.order, self.turn = list(names), 0
        self.cond = threading.Condition()
        self.states: dict[str, Any] = {}

    def _mine(self, name: str) -> bool:
        return self.order[self.turn % len(self.order)] == name

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self._mine(name))
        if name in self.states:
            set_rng_state(self.states[name])

    def hand_on(self, name: str) -> None:
        self.states[name] = rng_state()
        with self.cond:
            self.turn = (self.turn + 1) % len(self.order)
            self.cond.notify_all()
        self.wait(name)

    def leave(self, name: str) -> None:
        """Called by the contender holding the baton: the one after it in the order takes it."""
        with self.cond:
            index = self.order.index(name)
            self.order.remove(name)
            self.turn = index % len(self.order) if self.order else 0
            self.cond.notify_all()


def interleaved_round(cfg, root: Path, data, order: list[str]) -> dict[str, Any]:
    """One round: every contender trains a fresh run, epoch by epoch in turn. Returns name → (epoch
    times, final weights), or None where a contender is not installed."""
    baton, results = Baton(order), {}

    def run(name: str) -> None:
        baton.wait(name)
        try:
            results[name] = CONTENDERS[name](cfg, root, data, after_epoch=lambda: baton.hand_on(name))
        finally:
            baton.leave(name)

    threads = [threading.Thread(target=run, args=(name,)) for name in order]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


OUTSIDE_STEPS = ("validate", "end_epoch", "start_epoch")  # what an epoch does around its steps


def reads_per_step(cfg, root: Path, data, steps: int) -> dict[str, str]:
    """Device reads per training step over one epoch of each contender (torch's host-side reads aside),
    and those of the epoch around its steps (its start, its end, validation)."""
    one = cfg.model_copy(update={"training": cfg.training.model_copy(update={"epochs": 1})})
    runs: dict[str, Any] = dict(CONTENDERS)
    # wf's path on accelerators: read back once per monitoring window (on the CPU it checks every step)
    runs["wf, windowed (its GPU path)"] = lambda c, r, d: Trainer(c, r, None, data=d, windowed=True).fit()
    out = {}
    for name, run in runs.items():
        with HostReads(OUTSIDE_STEPS) as reads:
            done = run(one, root, data)
        if done is not None:
            in_steps = reads.device_reads(in_steps=True)
            label = "wf (CPU: checks each step)" if name == "wf" and cfg.training.device == "cpu" else name
            out[label] = (f"{in_steps / steps:.3f} per step ({in_steps} in {steps} steps); "
                         f"{reads.device_reads() - in_steps} around them (start, end, validation)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=("fashion", "digits", "patches", "packed"), default="fashion")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="simple_cnn")
    ap.add_argument("--channels", default="32,64", help="simple_cnn: its convolutions' widths (two, as the "
                    "Fashion-MNIST CNN of the tutorials)")
    ap.add_argument("--train", type=int, default=20_000, help="fashion: training images")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp())
    cfg = config(args.epochs, args.device, args.model, args.batch)
    if args.model == "simple_cnn":
        channels = [int(c) for c in args.channels.split(",")]
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"channels": channels})})
    data = (build_data(cfg, root) if args.data == "digits" else packed_data(64, root) if args.data == "packed"
            else patch_data(64) if args.data == "patches"
            else patch_data(28, train=args.train, val=args.train // 10, bands=1, classes=10))
    steps = len(make_loader(data.train, cfg, train=True, device=torch.device(args.device), seed=0))
    names = [n for n in CONTENDERS]
    hand_loop(cfg, root, data)  # warm-up: allocator, kernels, thread pools
    per_round: dict[str, list[float]] = {n: [] for n in names}
    per_epoch: dict[str, list[float]] = {n: [] for n in names}  # ratio to the hand loop, epoch by epoch
    identical = {n: True for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        results = {n: v for n, v in interleaved_round(cfg, root, data, order).items() if v is not None}
        hand_times = results["hand-written loop"][0]
        for name, (times, weights) in results.items():
            per_round[name].append(statistics.median(times[1:] if len(times) > 1 else times))
            per_epoch[name] += [t / h for t, h in zip(times[1:], hand_times[1:])]
            identical[name] &= all(torch.equal(weights[k].cpu(), results["hand-written loop"][1][k].cpu())
                                   for k in weights)
        print(f"round {r + 1}: " + ", ".join(f"{n} {per_round[n][-1] / per_round['hand-written loop'][-1]:.3f}"
                                          for n in names if n in results), flush=True)
    print(f"data {data.source}; device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"model {args.model}, batch {args.batch}, {steps} steps per epoch, {args.epochs} epochs per run, "
          f"{args.rounds} interleaved rounds (median epoch time of epochs 2..{args.epochs}, training loop only)")
    hand = per_round["hand-written loop"]
    for name in names:
        if not per_round[name]:
            print(f"{name:<20} not installed (pip install lightning)")
            continue
        ratios = [t / h for t, h in zip(per_round[name], hand)]
        q = statistics.quantiles(per_epoch[name], n=4) if len(per_epoch[name]) > 1 else [per_epoch[name][0]] * 3
        print(f"{name:<20} {statistics.median(per_round[name]) * 1e3 / steps:7.3f} ms/step   ÷ hand loop: median "
              f"of rounds {statistics.median(ratios):.3f} (rounds {min(ratios):.3f}–{max(ratios):.3f}); epoch by "
              f"epoch {statistics.median(per_epoch[name]):.3f} (quartiles {q[0]:.3f}–{q[2]:.3f}, "
              f"{len(per_epoch[name])} epochs)   final weights "
              f"{'identical to' if identical[name] else 'differ from'} the hand loop's")
    print("device reads per training step (one epoch; torch's own host-side reads aside):")
    for name, value in reads_per_step(cfg, root, data, steps).items():
        print(f"  {name:<34} {value}")


if __name__ == "__main__":
    main()
