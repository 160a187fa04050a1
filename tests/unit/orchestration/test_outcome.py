"""orchestration/outcome.py: a phase's end runs forward once. Its evidence is written once (one
file made, the phase's current evidence a link to the run's copy) and never read back: the
criteria, the report and the checklist's auto marks all come from the evidence in memory. Counted
through Python's audit events on real `wf phase` commands."""

from __future__ import annotations

import json

import pytest

from mlflow_core.workflow.evidence import archived_evidence_path, evidence_path, read_evidence
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.scaffold import init_project
from tests.helpers import FileEvents, configure

pytest.importorskip("torch")


def _phase_end(wf, root, phase, *args):
    project = Project(root)
    with FileEvents(project.evidence_dir) as events:
        r = wf("phase", phase, *args, cwd=root)
    state = json.loads(project.state_path.read_text())
    run = [r for r in state["runs"] if r["phase"] == phase][-1]
    # one epoch may miss the baseline's criteria (exit 1): its end is recorded all the same
    assert (r.code, run["status"]) in ((0, "completed"), (1, "failed_criteria")), r.out + r.err
    return project, run, events


@pytest.mark.parametrize("phase", ["setup", "baseline"])
def test_a_phase_end_writes_its_evidence_once_and_reads_none_of_it_back(wf, tmp_path, phase):
    root = init_project(tmp_path / "p").root
    configure(root, [("training.epochs", "1")])
    if phase == "baseline":
        _phase_end(wf, root, "setup")
    project, run, events = _phase_end(wf, root, phase, *(["--override-gate", "counting"] if phase != "setup" else []))
    current, archived = evidence_path(project, phase), archived_evidence_path(project, run["run_id"])
    names = {str(p.relative_to(project.evidence_dir)) for p in (current, archived)}
    assert [n for n in events.created if n.startswith((f".{phase}.json", "runs/"))] == [
        f"runs/.{archived.name}" + events.created[-1].split(archived.name, 1)[1]]  # one temp file, then renamed
    assert events.linked and all(n.startswith(f".{phase}.json.") for n in events.linked)
    assert not [n for n in events.read if n in names]  # nothing read back
    if phase == "baseline":  # the watch sees reads: the entry gate read setup's evidence
        assert "setup.json" in events.read
    assert current.stat().st_ino == archived.stat().st_ino
    evidence = read_evidence(project, phase)
    assert evidence.intact and evidence.sha256 == run["summary"]["evidence_sha256"]
    assert evidence.facts.report is not None  # the report's reference is in the one write
