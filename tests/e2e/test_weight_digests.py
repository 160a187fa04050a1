"""The final weights of three fixed runs (a digits baseline; a curriculum with EMA, mixing and
accumulation; a 2-process DDP run) are bit-identical to the digests recorded before the trainer was
rebuilt from one function into a loop, a step, a strategy and callbacks (see weight_digests.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.e2e.weight_digests import RECORD, REPO

torch = pytest.importorskip("torch")


def test_final_weights_are_bit_identical_to_the_recorded_digests():
    recorded = json.loads(RECORD.read_text())
    here = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if here != recorded["kernels"]:
        pytest.skip(f"digests were recorded with {recorded['kernels']}; this machine runs {here}")
    done = subprocess.run([sys.executable, "-m", "tests.e2e.weight_digests"], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["digests"] == recorded["digests"]
