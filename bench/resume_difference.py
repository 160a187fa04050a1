"""How far a resumed run lands from the uninterrupted one, on the device at hand (issue 5: "on GPU the
difference is stated").

For each setting (deterministic on/off, fp32/bf16) it trains three runs of the same config in this
process: two uninterrupted (A, B) and one stopped by SIGTERM mid-epoch and resumed from its
`resume.pt` (R). It prints the largest absolute weight difference |A - R| next to |A - B|, the
run-to-run difference the device shows with no interruption at all. A resume adds nothing of its
own when |A - R| is 0 where |A - B| is 0, and no larger than |A - B| where the device itself is not
deterministic.

    python bench/resume_difference.py [--device cuda] [--epochs 3] [--stop-at N] [--model simple_cnn]

Runs on the CPU as well (`--device cpu`), where every difference must be 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
from pathlib import Path

import torch

from mlflow_core.config import load_config_text
from mlflow_core.training.trainer import Trainer


def max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    worst = 0.0
    for key, tensor in sa.items():
        if tensor.is_floating_point():
            worst = max(worst, (tensor.float() - sb[key].float()).abs().max().item())
        elif not torch.equal(tensor, sb[key]):
            worst = float("inf")
    return worst


def trio(cfg, root: Path, stop_at: int | None) -> dict:
    a = Trainer(cfg, root, root / "a").fit()
    b = Trainer(cfg, root, root / "b").fit()
    if stop_at is None:  # past the middle, away from an epoch's end
        stop_at = a.metrics["steps"] * 3 // 5 + 1

    fired = []

    def signal_at(progress):  # progress may skip steps: fire once, at the first report past stop_at
        if progress.stage == "train" and progress.global_step >= stop_at and not fired:
            fired.append(progress.global_step)
            os.kill(os.getpid(), signal.SIGTERM)

    cut = Trainer(cfg, root, root / "r", on_progress=signal_at, stop_on_signals=True).fit()
    if cut.status != "interrupted":
        raise SystemExit(f"the run was not interrupted at step {stop_at} (status {cut.status}, "
                         f"{a.metrics['steps']} steps): pass a smaller --stop-at")
    resumed = Trainer(cfg, root, root / "r", stop_on_signals=True,
                      resume_from=root / "r" / "checkpoints" / "resume.pt").fit()
    return {"a_r": max_difference(a.model, resumed.model), "a_b": max_difference(a.model, b.model),
            "stopped_at": cut.metrics["steps"], "steps": resumed.metrics["steps"],
            "val_a": a.metrics["epochs"][-1]["val_loss"], "val_r": resumed.metrics["epochs"][-1]["val_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--stop-at", type=int, help="the step that gets SIGTERM (default: 3/5 of the way)")
    ap.add_argument("--model", default="simple_cnn", choices=["simple_cnn", "resnet18"])
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    args = ap.parse_args()
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__} on {device_name}; digits, {args.model}, {args.epochs} epochs, "
          f"SIGTERM at step {args.stop_at or '3/5 of the way'}")
    print(f"{'deterministic':<14}{'precision':<10}{'max |A-R|':>12}{'max |A-B|':>12}"
          f"{'val loss A':>12}{'val loss R':>12}  verdict")
    for deterministic in (True, False):
        for precision in args.precision:
            cfg = load_config_text(
                f"training: {{device: {args.device}, epochs: {args.epochs}, precision: {precision}}}\n"
                f"model: {{name: {args.model}}}\nreproducibility: {{deterministic: {str(deterministic).lower()}}}\n"
                "early_stopping: {enabled: false}\n", "bench")
            with tempfile.TemporaryDirectory() as tmp:
                r = trio(cfg, Path(tmp), args.stop_at)
            if r["a_r"] == 0:
                verdict = "bit-identical"
            elif r["a_r"] <= r["a_b"]:
                verdict = "within the device's run-to-run difference"
            else:
                verdict = "resume adds a difference"
            print(f"{deterministic!s:<14}{precision:<10}{r['a_r']:>12.3g}{r['a_b']:>12.3g}"
                  f"{r['val_a']:>12.6f}{r['val_r']:>12.6f}  {verdict} (stopped at step {r['stopped_at']} of {r['steps']})")


if __name__ == "__main__":
    main()
