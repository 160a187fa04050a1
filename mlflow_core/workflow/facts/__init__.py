"""What each phase records as evidence, as typed, torch-free models.

A runner builds its phase's facts model (a key it does not declare, or a value of the wrong type,
fails where it is written, in the tests); `evidence.read_evidence` validates the committed file into
the same model, so that checks, gates and reports read attributes, and a file from another wf
version is one clear message naming the field. Report templates get the JSON form (`to_json`): a
project's own copies of the templates read the same keys the committed evidence shows.

Reused from the run records (records.py): the best value, checkpoints, the non-finite event,
anomalies and the precision record, as the trainer wrote them to metrics.json.
"""

from __future__ import annotations

from mlflow_core.workflow.facts.base import Facts, FileRef, Fingerprints, PhaseFacts
from mlflow_core.workflow.facts.diagnostics import (
    ROOT_CAUSE_CONFIDENCE,
    DiagnosisOutcome,
    DiagnosisRecord,
    DiagnosticsFacts,
    FindingRecord,
    judge_diagnosis,
)
from mlflow_core.workflow.facts.finalization import (
    BundleRef,
    ExportRecord,
    FinalData,
    FinalizationFacts,
    MemberRun,
    RegisteredModel,
    Spread,
    TestSplit,
)
from mlflow_core.workflow.facts.optimization import (
    BestTrial,
    ComparedRun,
    Comparison,
    LrRangeTest,
    OptimizationFacts,
    PruningFacts,
    StudyFacts,
    TrialRow,
)
from mlflow_core.workflow.facts.setup import (
    DataCheck,
    EnvironmentFacts,
    ModelCheck,
    ReproducibilityCheck,
    SeedFacts,
    SetupFacts,
    ThroughputCheck,
)
from mlflow_core.workflow.facts.training import GpuSummary, ReplayRecord, RunProof, TrainingFacts

__all__ = ["ROOT_CAUSE_CONFIDENCE", "BestTrial", "BundleRef", "ComparedRun", "Comparison", "DataCheck", "DiagnosisOutcome", "DiagnosisRecord", "DiagnosticsFacts", "EnvironmentFacts", "ExportRecord", "Facts", "FileRef", "FinalData", "FinalizationFacts", "FindingRecord", "Fingerprints", "GpuSummary", "LrRangeTest", "MemberRun", "ModelCheck", "OptimizationFacts", "PhaseFacts", "PruningFacts", "RegisteredModel", "ReplayRecord", "ReproducibilityCheck", "RunProof", "SeedFacts", "SetupFacts", "Spread", "StudyFacts", "TestSplit", "ThroughputCheck", "TrainingFacts", "TrialRow", "judge_diagnosis"]
