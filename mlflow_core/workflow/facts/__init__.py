"""What each phase records as evidence, as typed, torch-free models.

A runner builds its phase's facts model (a key it does not declare, or a value of the wrong type,
fails where it is written, in the tests); `evidence.read_evidence` validates the committed file into
the same model, so that checks, gates and reports read attributes, and a file from another wf
version is one clear message naming the field. Report templates get the JSON form (`to_json`): a
project's own copies of the templates read the same keys the committed evidence shows.

Reused from the run records (records.py): the best value, checkpoints, the non-finite event,
anomalies and the precision record, as the trainer wrote them to metrics.json.

Importing the package imports none of its modules: a name is loaded from its module on first use
(`wf status` on a project without evidence never builds the phases' models, and reading one phase's
evidence builds that phase's only).
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF: dict[str, str] = {
    **dict.fromkeys(["Facts", "FileRef", "Fingerprints", "PhaseFacts"], "base"),
    **dict.fromkeys(["ROOT_CAUSE_CONFIDENCE", "DiagnosisOutcome", "DiagnosisRecord", "DiagnosticsFacts", "FindingRecord", "judge_diagnosis"], "diagnostics"),
    **dict.fromkeys(["BundleRef", "ExportRecord", "FinalData", "FinalizationFacts", "MemberRun", "RegisteredModel", "Spread", "TestSplit"], "finalization"),
    **dict.fromkeys(["BestTrial", "ComparedRun", "Comparison", "LrRangeTest", "OptimizationFacts", "PruningFacts", "StudyFacts", "TrialRow"], "optimization"),
    **dict.fromkeys(["DataCheck", "EnvironmentFacts", "ModelCheck", "ReproducibilityCheck", "SeedFacts", "SetupFacts", "ThroughputCheck"], "setup"),
    **dict.fromkeys(["GpuSummary", "ReplayRecord", "RunProof", "TrainingFacts"], "training"),
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
