"""What a detector returns: findings (a cause, its confidence and evidence, the fix) gathered in a
diagnosis of one run, with the probes' figures and, after `--fix`, the trials."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Finding:
    diagnostic: str
    cause: str  # a cause id documented in the playbook
    confidence: float  # 0..1
    evidence: dict[str, Any]
    fix: str
    explanation: str = ""
    # the effect in units of its sampling noise (workflow/noise.py); None: observed directly, no noise
    strength: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evidence_rank(finding: Finding) -> tuple[float, float]:
    """Sort key, strongest evidence first: confidence (for estimates already weighed by their noise),
    then strength, a direct observation counting as the strongest."""
    return (-finding.confidence, -(finding.strength if finding.strength is not None else float("inf")))


@dataclass
class Diagnosis:
    diagnostic: str
    run_id: str
    findings: list[Finding]
    probes: dict[str, Any] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    suggested_config: str | None = None
    report: str | None = None
    # the smallest effect the detector can see in this run's data, in a sentence ({diagnostic: …} for auto)
    sensitivity: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"diagnostic": self.diagnostic, "run": self.run_id,
                "findings": [f.to_json() for f in self.findings], "probes": self.probes,
                "trials": self.trials, "suggested_config": self.suggested_config, "report": self.report,
                "sensitivity": self.sensitivity}
