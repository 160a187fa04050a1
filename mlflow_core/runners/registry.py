"""The verified export in MLflow's registry (`monitoring.mlflow`): `wf phase finalization` logs the
model it exported as an MLflow logged model of the phase's run, saved with `mlflow.pytorch` (a
torch.export program, its signature and an input example from the test split), loads it back as
MLflow serves it and compares it with the trained model, and registers it as a version of the
project's model, tagged with its
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
    store = tracking.store
    with torch.no_grad():
        expected = model(batch).float().cpu()
    logged, version, diff = _log_and_register(
        store, model.cpu(), batch.cpu(), expected, ctx.cfg.project.name, tracking.run_id,
        {"wf.run_id": ctx.run_id, "wf.config_sha256": ctx.config_sha256,
         "wf.exported_seed": str(facts.get("exported_seed"))}, _tags(ctx, facts))
    model.to(batch.device)
    ctx.on_message(f"MLflow: registered {version.name} version {version.version}; loaded back by MLflow, its logits "
                   f"differ by at most {diff:.3g}")
    return {"name": version.name, "version": str(version.version), "model_uri": f"models:/{version.name}/{version.version}",
            "run_id": tracking.run_id, "model_id": logged.model_id,
            "tracking_uri": portable_uri(store.uri, ctx.project.root), "max_abs_diff": diff}


def _log_and_register(store: Any, model: torch.nn.Module, batch: torch.Tensor, expected: torch.Tensor, name: str,
                      run_id: str | None, model_tags: dict[str, str],
                      version_tags: dict[str, str]) -> tuple[Any, Any, float]:
    """`model` as an MLflow 3 logged model (the Models tab; made by `run_id` when given), saved with
    `mlflow.pytorch` (a torch.export program with the signature of `batch` and two of its rows as the
    input example), registered as a version of `name`, then loaded back as MLflow serves it: (the
    logged model, the version, the largest difference of its outputs from `expected`)."""
    import mlflow.pytorch
    from mlflow.models import infer_signature

    client = store.client
    example = batch[:2].detach()
    signature = infer_signature(example.numpy(), expected[:2].numpy())
    logged = client.create_logged_model(store.experiment_id, name="model", source_run_id=run_id, tags=model_tags,
                                        model_type="pytorch")
    try:
        with tempfile.TemporaryDirectory(prefix="wf-mlflow-model-") as tmp:
            local = Path(tmp) / "model"
            mlflow.pytorch.save_model(model, str(local), signature=signature, input_example=example.numpy(),
                                      serialization_format="pt2",
                                      pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
            client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    if not _exists(client, name):
        client.create_registered_model(name, description="Registered by wf (`wf phase finalization`, or `wf release` "
                                                         "for a finalization that did not); released with `wf "
                                                         "release` once the pre_release gate passes.")
    # the registry resolves a models:/<id> source, and load_model a models:/ URI, through MLflow's
    # process-wide URIs, not the client's: without these, the working directory's mlflow.db
    mlflow.set_registry_uri(store.uri)
    mlflow.set_tracking_uri(store.uri)
    version = client.create_model_version(name, source=f"models:/{logged.model_id}", run_id=run_id,
                                          tags=version_tags, model_id=logged.model_id)
    served = mlflow.pytorch.load_model(f"models:/{name}/{version.version}")
    with torch.no_grad():
        diff = float((served(batch).float() - expected).abs().max())
    return logged, version, diff


def register_recorded_export(project: Any, state: Any, evidence: Any, store: Any, name: str) -> dict[str, Any]:
    """The torch.export program a finalization verified, registered now (`wf release` for a
    finalization that ran with MLflow off): the file checked against the SHA-256 its evidence
    records, loaded and registered; nothing is trained again and the test split is not read. Its
    input example is zeros of the input shape (the test batch stays unread)."""
    from mlflow_core.errors import UserInputError
    from mlflow_core.workflow.evidence import file_sha256

    facts = evidence.facts
    export = next((e for e in facts.exports if e.kind == "torch_export" and e.verified and e.path), None)
    if export is None:
        raise UserInputError("the finalization registered no model in MLflow, and verified no torch.export program "
                             "(export/model.pt2) that `wf release` could register in its place.",
                             hint="Add torch_export to finalization.export, set monitoring.mlflow: true, and run "
                                  "`wf phase finalization` again.")
    path = project.inside(export.path)
    if not path.is_file() or file_sha256(path) != export.sha256:
        raise UserInputError(f"{export.path} is not the program the finalization verified (missing, or its SHA-256 "
                             f"differs from the {export.sha256[:12]}… its evidence records): it is not registered.",
                             hint="Restore the file the finalization wrote, or run `wf phase finalization` again.")
    program = torch.export.load(path).module()
    batch = torch.zeros(2, *facts.data.input_shape)
    with torch.no_grad():
        expected = program(batch).float()
    version_tags = _version_tags({key: spread.mean for key, spread in (facts.summary or {}).items()}, state.path(),
                                 evidence.run_id, facts.config_sha256, facts.exported_seed, export.sha256)
    version_tags["wf.registered_by"] = "wf release (the finalization ran with MLflow off)"
    with root_logging_kept():
        logged, version, diff = _log_and_register(
            store, program, batch, expected, name, None,
            {"wf.run_id": evidence.run_id, "wf.export_sha256": export.sha256}, version_tags)
    return {"name": version.name, "version": str(version.version),
            "model_uri": f"models:/{version.name}/{version.version}", "model_id": logged.model_id,
            "tracking_uri": portable_uri(store.uri, project.root), "max_abs_diff": diff}


def _exists(client: Any, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True


def _tags(ctx: RunContext, facts: dict[str, Any]) -> dict[str, str]:
    path = load_state(ctx.project).path()
    program = next((e for e in facts.get("exports") or [] if e.get("kind") == "torch_export" and e.get("sha256")), None)
    return _version_tags({key: spread["mean"] for key, spread in (facts.get("summary") or {}).items()},
                         [*path, "finalization"] if path[-1:] != ["finalization"] else path, ctx.run_id,
                         ctx.config_sha256, facts.get("exported_seed"), program["sha256"] if program else None)


def _version_tags(test_means: dict[str, float], path: list[str], run_id: str, config_sha256: str,
                  exported_seed: Any, export_sha256: str | None) -> dict[str, str]:
    """A registered version's tags: its test figures, the path through the phases, the run and
    config it comes from, and the SHA-256 of the torch.export program, what `wf release` holds the
    version to (the evidence is committed, the store is not)."""
    tags = {f"wf.test.{key}": f"{mean:.6g}" for key, mean in test_means.items()}
    tags.update({"wf.path": " → ".join(path), "wf.run_id": run_id, "wf.config_sha256": config_sha256,
                 "wf.gate.pre_release": "not checked: `wf release` checks it", "wf.exported_seed": str(exported_seed)})
    if export_sha256:
        tags["wf.export_sha256"] = export_sha256
    return tags
