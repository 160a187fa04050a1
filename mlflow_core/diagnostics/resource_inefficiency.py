"""resource_inefficiency: an under-used GPU (NVML utilization) or a run waiting on its data loader,
confirmed by a loader-only against model-only throughput probe.
Playbook and thresholds: diagnostics/resource_inefficiency.md."""

from __future__ import annotations

from typing import Any

from mlflow_core.diagnostics.base import Diagnostic
from mlflow_core.diagnostics.context import DiagnoseContext
from mlflow_core.diagnostics.findings import Diagnosis, Finding
from mlflow_core.errors import WfError

DATA_WAIT_HIGH = 0.20  # share of training time spent waiting for the loader, with the GPU under-used
CPU_DATA_WAIT_HIGH = 0.30  # on the CPU the model step is slow, so a loader this slow is the bottleneck
SMALL_BATCH = 128  # below this, a GPU is rarely kept busy by a small model


def resource_inefficiency(ctx: DiagnoseContext) -> Diagnosis:
    m = ctx.metrics
    gpu = m.gpu or {}  # the NVML sampler's summary (monitoring/nvml.py)
    total = sum(e.duration_s for e in m.epochs)
    wait = sum((e.data_wait_fraction or 0) * e.duration_s for e in m.epochs) / total if total else None
    probes = {"device": m.device, "gpu_p50": gpu.get("p50"), "gpu_mean": gpu.get("mean"),
              "data_wait_fraction": wait, "batch_size": m.batch_size, "num_workers": m.num_workers}
    target = gpu.get("target_percent", 60)
    if not gpu.get("available") or m.device.startswith("cpu") or gpu.get("p50") is None:
        findings = []
        if wait is not None and wait > CPU_DATA_WAIT_HIGH:
            loader = _throughput_probe(ctx)
            probes["throughput"] = loader
            ratio = loader.get("loader_to_model") if loader else None
            confirmed = ratio is None or ratio > 1
            if confirmed:
                findings.append(Finding(
                    "resource_inefficiency", "dataloader_bound", 0.85 if ratio else 0.7, {**probes},
                    "Raise data.num_workers (one per free core), and store inputs in a format that is cheap to "
                    "decode; cache decoded samples when they fit in memory.",
                    f"{wait:.0%} of training time waits for the data loader (threshold {CPU_DATA_WAIT_HIGH:.0%})"
                    + (f"; alone, the loader needs {ratio:.1f}× the time of a training step per batch" if ratio else "")))
        if not findings:
            probes["note"] = ("the run did not train on an NVIDIA GPU, and the data loader kept up: "
                              "nothing to improve")
        return Diagnosis("resource_inefficiency", ctx.run.run_id, findings, probes=probes)
    findings = []
    if gpu["p50"] < target:
        evidence = {**probes, "target_percent": target}
        low = f"median GPU utilization {gpu['p50']:.0f} % is below {target:.0f} %"
        if wait is not None and wait > DATA_WAIT_HIGH:
            findings.append(Finding("resource_inefficiency", "dataloader_bound", 0.85, evidence,
                                    "Raise data.num_workers, keep pin_memory on, and store inputs in a format that "
                                    "is cheap to decode (uncompressed arrays, or one file per shard).",
                                    f"{low}, and {wait:.0%} of training time waits for the data loader"))
        elif (m.batch_size or SMALL_BATCH) < SMALL_BATCH:
            findings.append(Finding("resource_inefficiency", "batch_too_small", 0.7, evidence,
                                    "Double training.batch_size until memory runs short (scale the learning rate "
                                    "with it).", f"{low} with batch size {m.batch_size}"))
        else:
            findings.append(Finding("resource_inefficiency", "model_too_small", 0.6, evidence,
                                    "A larger model or batch uses the GPU better; or train this one on a smaller GPU.",
                                    f"{low} although the loader keeps up and the batch is {m.batch_size}"))
    return Diagnosis("resource_inefficiency", ctx.run.run_id, findings, probes=probes)


def _throughput_probe(ctx: DiagnoseContext) -> dict[str, Any] | None:
    """Loader-only against model-only time per batch (imports torch); None where it cannot run."""
    try:
        # torch, for the probe: `wf diagnose --help` imports this module
        from mlflow_core.diagnostics.dynamics import throughput
        return throughput(ctx.run_config(), ctx.project_root, ctx.data())
    except (ImportError, WfError):  # no torch, or the data is gone since the run
        return None


DIAGNOSTIC = Diagnostic("resource_inefficiency", resource_inefficiency,
                        sees=f"a data wait above {DATA_WAIT_HIGH:.0%} of training time ({CPU_DATA_WAIT_HIGH:.0%} on the CPU), or a GPU below monitoring.gpu_utilization_target")
