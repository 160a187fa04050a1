"""Commands that do not train never import torch (it takes seconds to import)."""

import subprocess
import sys

import pytest

from mlflow_core.workflow.scaffold import init_project

PROBE = """
import sys
from mlflow_core.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "torchvision", "matplotlib", "sklearn") if m in sys.modules)
print("HEAVY:" + ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [
    ["status"], ["status", "--json"], ["gate", "check", "setup", "--json"], ["gate", "check", "baseline"],
    ["checklist", "show", "reproducibility"], ["checklist", "list"],
    ["checklist", "tick", "reproducibility", "data_documented"],
    ["config", "validate"], ["config", "schema"], ["--help"], ["slurm", "baseline", "--nodes", "2"],
    ["runs"], ["runs", "--json"], ["runs", "diff", "setup", "baseline"], ["data", "pack"], ["ci", "init", "github"], ["report", "summary"], ["release"],
    ["phase", "baseline", "--smoke", "--nproc-per-node", "2", "--resume"],  # refused before any process starts
])
def test_light_commands_do_not_import_torch(tmp_path, args):
    project = init_project(tmp_path / "p")
    out = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=project.root, capture_output=True, text=True,
                         timeout=120)
    assert "HEAVY:\n" in out.stderr or out.stderr.rstrip().endswith("HEAVY:"), out.stderr[-2000:]


LOADED = """
import sys
from mlflow_core.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("LOADED:" + ",".join(sorted(m for m in sys.modules if m.startswith("mlflow_core."))), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["status"], ["gate", "check", "--all"], ["checklist", "show", "reproducibility"],
                                  ["diagnose", "--help"]])
def test_read_only_commands_on_a_fresh_project_import_only_what_they_use(tmp_path, args):
    """No diagnostic module behind `wf diagnose --help`'s list of names, no phase's facts model where no
    evidence is recorded, no config schema where no config is read, no run records: each costs
    milliseconds on every call of a command CI runs on every pull request."""
    project = init_project(tmp_path / "p")
    out = subprocess.run([sys.executable, "-c", LOADED, *args], cwd=project.root, capture_output=True, text=True,
                         timeout=120)
    loaded = set(out.stderr.rpartition("LOADED:")[2].strip().split(","))
    unused = {"mlflow_core.diagnostics.registry", "mlflow_core.diagnostics.nan_loss", "mlflow_core.diagnostics.base",
              "mlflow_core.workflow.facts.setup", "mlflow_core.workflow.facts.training",
              "mlflow_core.workflow.facts.finalization", "mlflow_core.config.schema", "mlflow_core.workflow.records"}
    assert "mlflow_core.cli" in loaded, out.stderr[-2000:]
    assert not loaded & unused, sorted(loaded & unused)
