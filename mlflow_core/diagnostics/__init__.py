"""Phase 3 diagnostics: detectors over recorded evidence, active probes, fix trials.

Each diagnostic is a playbook (`diagnostics/<name>.md`, content), a detector that ranks causes
from evidence and probes, and the fixes it can try. Detectors return findings; they never act.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Every diagnostic `wf diagnose NAME` runs; each has a playbook diagnostics/<name>.md.
DIAGNOSTICS = ("nan_loss", "exploding_gradients", "vanishing_gradients", "dead_relu", "convergence_stall",
               "overfitting", "underfitting", "resource_inefficiency", "class_imbalance", "data_leakage",
               "bad_initialization", "input_scaling")


@dataclass(frozen=True)
class Finding:
    diagnostic: str
    cause: str  # a cause id documented in the playbook
    confidence: float  # 0..1
    evidence: dict[str, Any]
    fix: str
    explanation: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Diagnosis:
    diagnostic: str
    run_id: str
    findings: list[Finding]
    probes: dict[str, Any] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    suggested_config: str | None = None
    report: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"diagnostic": self.diagnostic, "run": self.run_id,
                "findings": [f.to_json() for f in self.findings], "probes": self.probes,
                "trials": self.trials, "suggested_config": self.suggested_config, "report": self.report}
