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
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from mlflow_core.atomic import atomic_link, atomic_write_json
from mlflow_core.workflow import jsontext
from mlflow_core.workflow.phases import PHASES
from mlflow_core.workflow.project import Project, safe_name
from mlflow_core.workflow.state import now_iso

if TYPE_CHECKING:
    from mlflow_core.workflow.facts import PhaseFacts

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
    project_id: str | None = None  # the project that recorded it (state.json's project_id)
    entered_from: dict[str, Any] | None = None  # {phase, evidence_sha256}: the evidence whose gate admitted it

    def why_not_intact(self) -> str:
        return self.problem or "was edited after it was recorded (its hash does not match)"


def evidence_path(project: Project, phase: str) -> Path:
    return project.evidence_dir / f"{safe_name(phase, 'phase')}.json"


def archived_evidence_path(project: Project, run_id: str) -> Path:
    return project.evidence_dir / "runs" / f"{safe_name(run_id, 'run id')}.json"


def evidence_of(phase: str, run_id: str | None, facts: PhaseFacts, *, project_id: str | None = None,
                entered_from: dict[str, Any] | None = None) -> Evidence:
    """The evidence `facts` make, in memory, exactly as read_evidence reads it back once written
    (the facts through their JSON form): what a phase's criteria are judged on before it is written.
    `project_id` and `entered_from` bind it to its project and to the evidence it was entered from."""
    if not isinstance(facts, PHASES[phase].facts):
        raise TypeError(f"{phase} records {PHASES[phase].facts.__name__}, not {type(facts).__name__}")
    body = {"phase": phase, "run_id": run_id, "facts": facts.to_json(), **_binding(project_id, entered_from)}
    return Evidence(phase, run_id, now_iso(), PHASES[phase].facts.model_validate(body["facts"]),
                    canonical_sha256(body), intact=True, record=body, project_id=project_id,
                    entered_from=entered_from)


def _binding(project_id: Any, entered_from: Any) -> dict[str, Any]:
    """The keys that bind evidence to its project and history, where it has them (evidence written
    before they existed hashes as it did)."""
    return {k: v for k, v in (("project_id", project_id), ("entered_from", entered_from)) if v is not None}


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
        raw = jsontext.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return Evidence(phase, None, "", None, "", intact=False, problem=f"cannot be read ({exc})")
    if not isinstance(raw, dict) or not isinstance(raw.get("facts"), dict):
        return Evidence(phase, None, "", None, "", intact=False, problem="holds no facts")
    project_id, entered_from = raw.get("project_id"), raw.get("entered_from")
    body = {"phase": raw.get("phase"), "run_id": raw.get("run_id"), "facts": raw["facts"],
            **_binding(project_id, entered_from)}
    stored, run_id, recorded_at = str(raw.get("sha256", "")), raw.get("run_id"), str(raw.get("recorded_at", ""))
    if stored != canonical_sha256(body) or raw.get("phase") != phase:
        return Evidence(phase, run_id, recorded_at, None, stored, intact=False)
    try:
        facts = PHASES[phase].facts.model_validate(raw["facts"])
    except ValidationError as exc:  # intact, but not what this wf records: another version wrote it
        return Evidence(phase, run_id, recorded_at, None, stored, intact=False,
                        problem=f"does not hold what this wf records ({_first_problem(exc)})")
    if not (project_id is None or isinstance(project_id, str)) or not (
            entered_from is None or isinstance(entered_from, dict)):
        return Evidence(phase, run_id, recorded_at, None, stored, intact=False,
                        problem="holds a project_id or entered_from that wf does not write")
    return Evidence(phase, run_id, recorded_at, facts, stored, intact=True, project_id=project_id,
                    entered_from=entered_from)


def find_evidence(project: Project, phase: str, sha256: str) -> Evidence | None:
    """The intact evidence of `phase` whose hash is `sha256`: its current one, or one a run recorded
    (`.wf/evidence/runs/<run id>.json`, run ids start with their phase): what an `entered_from` names."""
    current = read_evidence(project, phase)
    if current is not None and current.intact and current.sha256 == sha256:
        return current
    folder = project.evidence_dir / "runs"
    for path in sorted(folder.glob(f"{safe_name(phase, 'phase')}-*.json")) if folder.is_dir() else []:
        archived = read_evidence(project, phase, path)
        if archived is not None and archived.intact and archived.sha256 == sha256:
            return archived
    return None


def _first_problem(exc: ValidationError) -> str:
    from mlflow_core.workflow.records import first_problem  # the run records' models: only for a message

    return first_problem(exc, "facts")
