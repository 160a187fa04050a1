"""data_leakage: validation samples byte-identical to training samples, from setup's content hashes.
Playbook and thresholds: diagnostics/data_leakage.md."""

from __future__ import annotations

from mlflow_core.diagnostics.base import Diagnostic
from mlflow_core.diagnostics.context import DiagnoseContext, needs_setup_data
from mlflow_core.diagnostics.findings import Diagnosis, Finding
from mlflow_core.workflow.facts import DataCheck


@needs_setup_data
def data_leakage(ctx: DiagnoseContext, data: DataCheck) -> Diagnosis:
    overlap, val = data.overlap_train_val, max(data.val_size, 1)
    findings = []
    if overlap:
        share = overlap / val
        findings.append(Finding(
            "data_leakage", "train_val_overlap", 0.95 if share >= 0.01 else 0.7,
            {"identical_samples": overlap, "val_size": val, "share_of_val": round(share, 4)},
            "Remove the duplicated samples from val (or train) and split again: validation figures are "
            "optimistic while they overlap.",
            f"{overlap} validation samples ({share:.1%}) are byte-identical to training samples"))
    return Diagnosis("data_leakage", ctx.run.run_id, findings,
                     probes={"overlap_train_val": overlap, "scanned": data.scanned})


DIAGNOSTIC = Diagnostic("data_leakage", data_leakage,
                        sees="one validation sample byte-identical to a training sample (setup hashes every file it scans)")
