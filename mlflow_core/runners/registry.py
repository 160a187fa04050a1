"""The verified export in MLflow's registry (`monitoring.mlflow`): `wf phase finalization` logs the
model it exported to the phase's MLflow run with `mlflow.pytorch` (a torch.export program, its
signature and an input example from the test split), loads it back as MLflow serves it and compares
it with the trained model, and registers it as a version of the project's model, tagged with its
test figures, the path through the phases and the fingerprints. It is not released: `wf release`
sets its alias once the pre_release gate passes. Never fatal: a failure is said, and the phase goes
on without a registered version."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from mlflow_core.monitoring.mlflow_store import portable_uri, root_logging_kept
from mlflow_core.runners import RunContext
from mlflow_core.workflow.state import load_state

log = logging.getLogger("wf.mlflow")


def register_export(ctx: RunContext, model: torch.nn.Module, batch: torch.Tensor,
                    facts: dict[str, Any]) -> dict[str, Any] | None:
    tracking = ctx.tracking
    if tracking is None or not tracking.store.ok or ctx.smoke:
        return None
    try:
        with root_logging_kept():
            return _register(ctx, tracking, model.eval(), batch, facts)
    except Exception as exc:  # MLflow, the registry or torch.export: said, and the phase goes on
        log.warning("MLflow: the model was not registered: %s: %s", type(exc).__name__, str(exc).splitlines()[0][:300])
        ctx.on_message(f"MLflow: the model was not registered ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
        return None


def _register(ctx: RunContext, tracking: Any, model: torch.nn.Module, batch: torch.Tensor,
              facts: dict[str, Any]) -> dict[str, Any]:
    import mlflow.pytorch
    from mlflow.models import infer_signature

    store, client = tracking.store, tracking.store.client
    example = batch[:2].detach().cpu()
    with torch.no_grad():
        expected = model(batch).float().cpu()
    signature = infer_signature(example.numpy(), expected[:2].numpy())
    with tempfile.TemporaryDirectory(prefix="wf-mlflow-model-") as tmp:
        local = Path(tmp) / "model"
        mlflow.pytorch.save_model(model.cpu(), str(local), signature=signature, input_example=example.numpy(),
                                  serialization_format="pt2",
                                  pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        client.log_artifacts(tracking.run_id, str(local), "model")
    model.to(batch.device)
    name = ctx.cfg.project.name
    if not _exists(client, name):
        client.create_registered_model(name, description="Registered by `wf phase finalization`; released with "
                                                         "`wf release` once the pre_release gate passes.")
    source = f"{client.get_run(tracking.run_id).info.artifact_uri}/model"
    version = client.create_model_version(name, source=source, run_id=tracking.run_id, tags=_tags(ctx, facts))
    uri = f"models:/{name}/{version.version}"
    mlflow.set_registry_uri(store.uri)  # load_model resolves models:/ through the registry it is given
    mlflow.set_tracking_uri(store.uri)
    served = mlflow.pytorch.load_model(uri)
    with torch.no_grad():
        diff = float((served(batch.cpu()).float() - expected).abs().max())
    ctx.on_message(f"MLflow: registered {name} version {version.version}; loaded back by MLflow, its logits "
                   f"differ by at most {diff:.3g}")
    return {"name": name, "version": str(version.version), "model_uri": uri, "run_id": tracking.run_id,
            "tracking_uri": portable_uri(store.uri, ctx.project.root), "max_abs_diff": diff}


def _exists(client: Any, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True


def _tags(ctx: RunContext, facts: dict[str, Any]) -> dict[str, str]:
    summary = facts.get("summary") or {}
    tags = {f"wf.test.{key}": f"{spread['mean']:.6g}" for key, spread in summary.items()}
    path = load_state(ctx.project).path()
    tags.update({"wf.path": " → ".join([*path, "finalization"] if path[-1:] != ["finalization"] else path),
                 "wf.run_id": ctx.run_id, "wf.config_sha256": ctx.config_sha256,
                 "wf.gate.pre_release": "not checked: `wf release` checks it",
                 "wf.exported_seed": str(facts.get("exported_seed"))})
    return tags
