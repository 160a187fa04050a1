"""How far `wf verify`'s recomputations land from what a run recorded, on a device: the tolerance the
GPU comparison needs, measured rather than assumed.

A digits baseline trained through the CLI on `--device` (4 epochs, states kept every epoch), then, in
this process: the best checkpoint evaluated again on the validation split `--repeats` times (each
figure's largest relative difference from the recorded one), and every epoch re-trained from its kept
state (whether its weights are bit-equal to the recorded digest, and otherwise the largest |Δw|
against the next kept state). On the CPU every difference is 0; `wf verify` compares GPU figures
within runners/run_claims.GPU_RELATIVE_TOLERANCE, which this script's GPU figures should confirm
or replace. Last: `wf verify baseline --segments 4` itself, its verdict.

    python bench/verify_device.py --device cuda [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def wf(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlflow_core", *args], cwd=project, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, check=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from mlflow_core.config.schema import WorkflowConfig
    from mlflow_core.runners.run_claims import COMPARED_FIGURES, GPU_RELATIVE_TOLERANCE
    from mlflow_core.training.checkpoint import load_checkpoint, weights_sha256
    from mlflow_core.training.trainer import Trainer
    from tests.helpers import configure

    with tempfile.TemporaryDirectory(prefix="wf-bench-verify-device-") as tmp:
        root = Path(tmp)
        assert wf(root, "init", "p").returncode == 0
        project = root / "p"
        configure(project, [("training.device", args.device), ("training.epochs", "4")])
        for step in (("phase", "setup"), ("checklist", "tick", "reproducibility", "data_documented",
                                          "config_committed"), ("phase", "baseline")):
            done = wf(project, *step)
            assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr
        facts = json.loads((project / ".wf" / "evidence" / "baseline.json").read_text())["facts"]
        best = load_checkpoint(project / facts["checkpoints"]["best"]["path"])
        cfg = WorkflowConfig.model_validate(best["config"])
        print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), "
              f"torch {torch.__version__}, the tolerance verify applies on a GPU: {GPU_RELATIVE_TOLERANCE:g} relative")

        worst: dict[str, float] = {}
        for _ in range(args.repeats):
            trainer = Trainer(cfg, project, None, run_id="bench")
            trainer.build()
            trainer.model.load_state_dict(best["model"])
            figures = trainer.validate()
            for key in COMPARED_FIGURES:
                if key in figures and key in facts["best_validation"]:
                    now, then = float(figures[key]), float(facts["best_validation"][key])
                    worst[key] = max(worst.get(key, 0.0), abs(now - then) / max(abs(then), 1e-12))
        print("best checkpoint evaluated again, largest relative difference per figure over "
              f"{args.repeats} repeats: " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))

        run_dir = project / facts["run_dir"]
        for epoch in facts["replay"]["epochs"]:
            recorded = facts["weights"][str(epoch)]
            trainer = Trainer(cfg, project, None, run_id="bench",
                              resume_from=run_dir / "checkpoints" / "replay" / f"epoch_{epoch:03d}.pt")
            trainer.fit(max_steps=recorded["step"])
            state = trainer.model.state_dict()
            equal = weights_sha256(state) == recorded["sha256"]
            following = run_dir / "checkpoints" / "replay" / f"epoch_{epoch + 1:03d}.pt"
            diff = "—"
            if not equal and following.is_file():
                kept = load_checkpoint(following)["model"]
                diff = f"{max(float((state[k].float().cpu() - kept[k].float()).abs().max()) for k in kept):.3g}"
            print(f"epoch {epoch} re-trained: bit-equal {equal}; max |Δw| against the kept next state {diff}")

        verdict = wf(project, "verify", "baseline", "--segments", "4", "--seed", "0", "--json")
        result = json.loads(verdict.stdout)
        failed = [c for p in result["phases"] for c in p["claims"] if c["status"] != "verified"]
        print(f"`wf verify baseline --segments 4`: exit {verdict.returncode}; "
              + ("every claim verified" if not failed else "; ".join(f"{c['name']}: {c['detail']}" for c in failed)))


if __name__ == "__main__":
    main()
