"""The wheel carries the content folders, and a bare install (no torch) refuses to train cleanly."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mlflow_core.workflow.scaffold import init_project

REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_the_content(tmp_path):
    pytest.importorskip("hatchling")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("wf_phases-*.whl"))).namelist()
    for kind, folder in (("phases", REPO / "phases"), ("checklists", REPO / "checklists"),
                         ("diagnostics", REPO / "diagnostics"), ("templates", REPO / "templates")):
        for path in folder.rglob("*"):
            if path.is_file():
                assert f"mlflow_core/_content/{kind}/{path.relative_to(folder)}" in names


PROBE = """
import sys
sys.modules["torch"] = None  # as if the training extra were not installed
from mlflow_core.cli import main
main(sys.argv[1:])
"""


def test_phase_without_torch_is_bad_input_and_writes_nothing(tmp_path):
    project = init_project(tmp_path / "p")
    state_before = (project.root / ".wf" / "state.json").read_text()
    out = subprocess.run([sys.executable, "-c", PROBE, "phase", "setup"], cwd=project.root, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "needs the training stack" in out.stderr and "pip install 'wf-phases[train]'" in out.stderr
    assert "Traceback" not in out.stderr
    assert (project.root / ".wf" / "state.json").read_text() == state_before
    assert not (project.root / "runs").exists()
