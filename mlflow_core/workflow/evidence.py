"""Evidence: the small, committed facts a phase recorded, from which gates are verified.

`.wf/evidence/<phase>.json` carries a sha256 of its own facts, and the run record in state.json
carries the same hash, so a hand edit of either is noticed by `wf gate check`. The facts are written
from, and read into, the phase's model (facts.py; which model: the phase registry, phases.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mlflow_core.atomic import atomic_link, atomic_write_json
from mlflow_core.workflow.facts import PhaseFacts
from mlflow_core.workflow.phases import PHASES
from mlflow_core.workflow.project import Project, safe_name
from mlflow_core.workflow.records import first_problem
from mlflow_core.workflow.state import now_iso

EVIDENCE_SCHEMA_VERSION = 1


def canonical_sha256(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Evidence:
    phase: str
    run_id: str | None
    recorded_at: str
    facts: Any  # the phase's PhaseFacts model; None unless intact
    sha256: str
    intact: bool  # the stored hash matches the facts, and they are the phase's model
    problem: str = ""  # why not intact
    record: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # what store_evidence writes

    def why_not_intact(self) -> str:
        return self.problem or "was edited after it was recorded (its hash does not match)"


def evidence_path(project: Project, phase: str) -> Path:
    return project.evidence_dir / f"{safe_name(phase, 'phase')}.json"


def archived_evidence_path(project: Project, run_id: str) -> Path:
    return project.evidence_dir / "runs" / f"{safe_name(run_id, 'run id')}.json"


def evidence_of(phase: str, run_id: str | None, facts: PhaseFacts) -> Evidence:
    """The evidence `facts` make, in memory, exactly as read_evidence reads it back once written
    (the facts through their JSON form): what a phase's criteria are judged on before it is written."""
    if not isinstance(facts, PHASES[phase].facts):
        raise TypeError(f"{phase} records {PHASES[phase].facts.__name__}, not {type(facts).__name__}")
    body = {"phase": phase, "run_id": run_id, "facts": facts.to_json()}
    return Evidence(phase, run_id, now_iso(), PHASES[phase].facts.model_validate(body["facts"]),
                    canonical_sha256(body), intact=True, record=body)


def store_evidence(project: Project, evidence: Evidence) -> str:
    """Write `evidence` (from evidence_of) as the phase's: what its gate judges. A copy is kept per
    run, so that `wf runs select` can make an earlier run the one the gate judges again."""
    assert evidence.record is not None, "only evidence made by evidence_of is written"
    record = {"schema_version": EVIDENCE_SCHEMA_VERSION, "recorded_at": evidence.recorded_at, **evidence.record,
              "sha256": evidence.sha256}
    if not evidence.run_id:
        atomic_write_json(evidence_path(project, evidence.phase), record)
        return evidence.sha256
    archived = archived_evidence_path(project, evidence.run_id)
    atomic_write_json(archived, record)  # written once; the phase's current evidence is the same file
    atomic_link(archived, evidence_path(project, evidence.phase))
    return evidence.sha256


def write_evidence(project: Project, phase: str, run_id: str | None, facts: PhaseFacts) -> str:
    return store_evidence(project, evidence_of(phase, run_id, facts))


def read_evidence(project: Project, phase: str, path: Path | None = None) -> Evidence | None:
    """None when the phase has recorded nothing; a damaged file reads as not intact, saying why.
    `path`: an archived copy (one run's) instead of the phase's current evidence."""
    path = path or evidence_path(project, phase)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return Evidence(phase, None, "", None, "", intact=False, problem=f"cannot be read ({exc})")
    if not isinstance(raw, dict) or not isinstance(raw.get("facts"), dict):
        return Evidence(phase, None, "", None, "", intact=False, problem="holds no facts")
    body = {"phase": raw.get("phase"), "run_id": raw.get("run_id"), "facts": raw["facts"]}
    stored, run_id, recorded_at = str(raw.get("sha256", "")), raw.get("run_id"), str(raw.get("recorded_at", ""))
    if stored != canonical_sha256(body) or raw.get("phase") != phase:
        return Evidence(phase, run_id, recorded_at, None, stored, intact=False)
    try:
        facts = PHASES[phase].facts.model_validate(raw["facts"])
    except ValidationError as exc:  # intact, but not what this wf records: another version wrote it
        return Evidence(phase, run_id, recorded_at, None, stored, intact=False,
                        problem=f"does not hold what this wf records ({first_problem(exc, 'facts')})")
    return Evidence(phase, run_id, recorded_at, facts, stored, intact=True)
