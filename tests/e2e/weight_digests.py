"""Digests of the final weights of three fixed training runs: the trainer's redesign (and any later
refactoring) must leave them bit-identical. `python -m tests.e2e.weight_digests` prints the current
digests as JSON; `--write` records them in weight_digests.json next to this file.

Bit-identity holds for one set of CPU kernels: the digests are recorded with torch's version and
the CPU capability torch dispatches to (AVX2, AVX512 …), and compared only where both match.
Every run uses one thread, so that the order of float reductions does not follow the core count.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RECORD = Path(__file__).with_name("weight_digests.json")
REPO = Path(__file__).resolve().parents[2]

COMMON = ("reproducibility: {seed: 7}\nearly_stopping: {enabled: false}\n"
          "monitoring: {check_every_n_steps: 10}\n")
RUNS = {
    # the digits example's baseline, as `wf quickstart` configures it, shortened to 3 epochs
    "digits_baseline": COMMON + "data: {source: digits}\n"
                       "training: {device: cpu, epochs: 3, batch_size: 32}\nmodel: {channels: [16, 32, 64, 64]}\n",
    # a curriculum (a frozen, half-data, small-image first stage) with EMA, mixing, accumulation,
    # label smoothing and a per-step schedule
    "curriculum_ema_mixing_accumulation": COMMON + "data: {source: digits}\n"
        "training: {device: cpu, epochs: 3, batch_size: 16, accumulate_steps: 2, label_smoothing: 0.1, "
        "learning_rate: 0.002, scheduler: {name: warmup_cosine, warmup_epochs: 1}, "
        "ema: {enabled: true, decay: 0.95}}\n"
        "model: {channels: [8, 16]}\n"
        "augmentation: {mixup_alpha: 0.4, cutmix_alpha: 1.0, mix_probability: 0.7, horizontal_flip: 0.5}\n"
        "curriculum: {stages: [{epochs: 1, image_size: 16, batch_size: 16, data_fraction: 0.5, "
        "freeze: [features.0, features.1]}, {epochs: 2, batch_size: 32, lr_scale: 0.5}]}\n",
}
DDP_SETTINGS = [("training.epochs", "2"), ("training.batch_size", "32"), ("early_stopping.enabled", "false"),
                ("model.channels", "[8, 16]"), ("reproducibility.seed", "7")]


def weights_digest(state_dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()


def kernels() -> dict[str, str]:
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def single_process(name: str, root: Path) -> str:
    import torch

    from mlflow_core.config import load_config_text
    from mlflow_core.training.trainer import Trainer

    torch.set_num_threads(1)
    result = Trainer(load_config_text(RUNS[name], f"{name}.yaml"), root, root / name).fit()
    assert result.status == "completed", result.metrics.get("stop_reason")
    return weights_digest(result.model.state_dict())


def two_process_ddp(root: Path) -> str:
    """`wf phase baseline --nproc-per-node 2` (gloo, one thread per rank) in a digits project; the
    digest of the final weights rank 0 wrote to last_model.pt."""
    import torch

    from mlflow_core.workflow.scaffold import init_project
    from tests.helpers import configure

    project = init_project(root / "ddp").root
    configure(project, DDP_SETTINGS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "mlflow_core", "phase", "baseline", "--nproc-per-node", "2",
                           "--override-gate", "recording weight digests"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr[-2000:]
    last = next(project.glob("runs/*/checkpoints/last_model.pt"))
    return weights_digest(torch.load(last, map_location="cpu", weights_only=True)["model"])


def current() -> dict[str, str]:
    root = Path(tempfile.mkdtemp(prefix="wf-digests-"))
    try:
        digests = {name: single_process(name, root) for name in RUNS}
        digests["ddp_two_processes"] = two_process_ddp(root)
        return digests
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    record = {"kernels": kernels(), "digests": current()}
    print(json.dumps(record, indent=2))
    if "--write" in sys.argv:
        RECORD.write_text(json.dumps(record, indent=2) + "\n")
