"""Phase 3, diagnostics: the diagnoses of a run, and the outcome they conclude."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from mlflow_core.workflow.facts.base import Facts, PhaseFacts


class FindingRecord(Facts):
    diagnostic: str
    cause: str
    confidence: float
    evidence: dict[str, Any]
    fix: str
    explanation: str = ""
    strength: float | None = None  # the effect in units of its sampling noise; None: observed directly


class DiagnosisRecord(Facts):
    """A diagnosis in its JSON form (diagnostics/base.py: Diagnosis.to_json). Probes and trials are
    each diagnostic's own figures, shown by its report section."""
    diagnostic: str
    run: str
    findings: list[FindingRecord]
    probes: dict[str, Any]
    trials: list[dict[str, Any]]
    suggested_config: str | None
    report: str | None
    sensitivity: dict[str, str] = Field(default_factory=dict)  # diagnostic → the smallest effect it can see in this run's data


ROOT_CAUSE_CONFIDENCE = 0.7  # the top finding must be at least this likely to count as the root cause
DiagnosisOutcome = Literal["cause_found", "nothing_to_fix", "unexplained"]


class DiagnosticsFacts(PhaseFacts):
    diagnosed_run: str
    diagnosis: DiagnosisRecord
    verified_fix: str | None
    suggested_config: str | None
    # what the diagnosis concluded: a cause (top finding likely enough), nothing to fix (the run met
    # its success criteria and no diagnostic fired), or neither; None in evidence of an earlier wf
    outcome: DiagnosisOutcome | None = None
    diagnosed_run_passed: bool | None = None

    def top_finding(self) -> FindingRecord | None:
        return self.diagnosis.findings[0] if self.diagnosis.findings else None

    def concluded(self) -> DiagnosisOutcome:
        if self.outcome is not None:
            return self.outcome
        return judge_diagnosis(self.top_finding(), self.diagnosed_run_passed)


def judge_diagnosis(top: FindingRecord | None, run_passed: bool | None) -> DiagnosisOutcome:
    if top is not None and top.confidence >= ROOT_CAUSE_CONFIDENCE:
        return "cause_found"
    if top is None and run_passed:
        return "nothing_to_fix"
    return "unexplained"
