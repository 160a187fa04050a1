"""`wf release [--alias champion]`: the registered model behind the release gate. The alias is set
on the version `wf phase finalization` registered only when the pre_release gate passes now (what
`wf gate check finalization` checks); otherwise exit 3 naming what is open. A finalization that ran
with MLflow off registered nothing: its verified torch.export program is registered first (checked
against its recorded SHA-256; nothing trained again, the test split unread), into the project's
store. The release is recorded in the history; `wf status` and the summary show it. MLflow's client
only, and torch only to register an export."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mlflow_core.errors import GateClosedError, UserInputError
from mlflow_core.workflow.evidence import read_evidence
from mlflow_core.workflow.facts import RegisteredModel
from mlflow_core.workflow.gates import chain_verdicts, evaluate_gate
from mlflow_core.workflow.lock import locked
from mlflow_core.workflow.project import Project
from mlflow_core.workflow.state import load_state, save_state, who


@dataclass(frozen=True)
class Release:
    name: str
    version: str
    alias: str
    model_uri: str  # models:/<name>@<alias>
    tracking_uri: str


def release(project: Project, alias: str = "champion", override_reason: str | None = None) -> Release:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", alias) or re.fullmatch(r"[vV]\d+", alias):
        raise UserInputError(f"--alias {alias!r}: an alias is letters, digits, - and _, and not v<number> "
                             "(MLflow keeps those for versions)")
    if override_reason is not None and not override_reason.strip():
        raise UserInputError("--override-gate needs a reason")
    return _release(project, alias, override_reason.strip() if override_reason else None)


@locked("wf release --alias {alias}")
def _release(project: Project, alias: str, override_reason: str | None = None) -> Release:
    state = load_state(project)
    evidence = read_evidence(project, "finalization")
    if evidence is None or not evidence.intact:
        raise UserInputError("there is no finalization to release: no intact .wf/evidence/finalization.json.",
                             hint="Run `wf phase finalization` (with monitoring.mlflow: true) first.")
    registered = evidence.facts.registered or _registered_later(state, evidence)
    gate = evaluate_gate(project, state, "finalization")
    if not gate.passed:
        left = [i.id for i in gate.open_items] + [f"unchanged {d.kind}" for d in gate.drift]
        what = (f"{registered.name} version {registered.version}" if registered is not None
                else "the finalization's model")
        raise GateClosedError(f"cannot release {what}: the pre_release gate ({gate.path}) does not pass: "
                              f"{', '.join(left)} open.",
                              hint="`wf gate check finalization` shows each item and how to close it.")
    # the pre_release gate is the release's own; the gates before it are the path the model came by
    closed = [v for v in chain_verdicts(project, state) if not v.passed and v.phase != "finalization"]
    if closed and override_reason is None:
        what = "; ".join(f"{v.phase}: " + ", ".join([i.id for i in v.open_items] + [f"changed {d.kind}" for d in v.drift])
                         for v in closed)
        raise GateClosedError(f"cannot release: the finalization passes its gate, but gates on the path to it do not "
                              f"hold ({what}); the model reached finalization past them.",
                              hint="`wf gate check --all` shows each item and how to close it; or release anyway with "
                                   "`wf release --override-gate \"reason\"` (recorded in the history, on the "
                                   "version's tags and in the summary).")
    if registered is None:  # the finalization ran with MLflow off: its verified export is registered now
        registered = _register_export(project, state, evidence)
    uri = _store_of(project, registered.tracking_uri)
    _check_version_is_export(registered, uri, evidence)  # the evidence is committed, the store is not
    overridden = {"override": override_reason, "gates_closed": [v.phase for v in closed]} if closed else {}
    _set_alias(registered, alias, uri, overridden.get("override"))
    state.record("release", model=registered.name, version=registered.version, alias=alias,
                 run_id=evidence.run_id, by=who(), **overridden)
    save_state(project, state)
    return Release(registered.name, registered.version, alias, f"models:/{registered.name}@{alias}", uri)


def _registered_later(state: Any, evidence: Any) -> RegisteredModel | None:
    """The version `wf release` registered for this finalization (its evidence, unchanged, records none)."""
    event = next((e for e in reversed(state.history) if e.event == "registered" and
                  getattr(e, "run_id", None) == evidence.run_id and
                  getattr(e, "evidence_sha256", None) == evidence.sha256), None)
    if event is None:
        return None
    return RegisteredModel(name=event.model, version=event.version, model_uri=event.model_uri,
                           run_id=evidence.run_id, model_id=event.model_id, tracking_uri=event.tracking_uri)


def _register_export(project: Project, state: Any, evidence: Any) -> RegisteredModel:
    from mlflow_core.config import load_config
    from mlflow_core.monitoring.mlflow_store import open_store, require_mlflow

    require_mlflow()
    cfg = load_config(project.config_path)
    store = open_store(project.root, cfg.monitoring.mlflow_uri, cfg.project.name)
    if not store.ok:
        raise UserInputError(f"MLflow's store at {store.uri} cannot be opened, so the finalization's model cannot be "
                             "registered.", hint="Check monitoring.mlflow_uri (or MLFLOW_TRACKING_URI), then run "
                                                 "`wf release` again.")
    from mlflow_core.runners.registry import register_recorded_export  # torch

    done = register_recorded_export(project, state, evidence, store, cfg.project.name)
    state.record("registered", model=done["name"], version=done["version"], model_uri=done["model_uri"],
                 model_id=done["model_id"], tracking_uri=done["tracking_uri"], run_id=evidence.run_id,
                 evidence_sha256=evidence.sha256, max_abs_diff=done["max_abs_diff"], by=who())
    save_state(project, state)
    return RegisteredModel(name=done["name"], version=done["version"], model_uri=done["model_uri"],
                           run_id=evidence.run_id, model_id=done["model_id"], tracking_uri=done["tracking_uri"],
                           max_abs_diff=done["max_abs_diff"])


def _store_of(project: Project, recorded: str) -> str:
    """The store the evidence names, where this project is: its own SQLite file resolved against the
    project (a copied or moved project releases into its own store). An absolute path to another
    folder's file (evidence of an earlier wf) is refused rather than written into."""
    from mlflow_core.monitoring.mlflow_store import MLFLOW_DB, resolved_uri

    uri = resolved_uri(recorded, project.root)
    own = f"sqlite:///{(project.root / MLFLOW_DB).resolve()}"
    if uri.startswith("sqlite:///") and uri.endswith(f"/{MLFLOW_DB}") and uri != own:
        raise UserInputError(f"the finalization registered its model in {uri}, another folder's store, not this "
                             f"project's ({own}): releasing would write into that one.",
                             hint="Run `wf phase finalization` again here, to register the model in this project's "
                                  "store.")
    return uri


def _check_version_is_export(registered: RegisteredModel, uri: str, evidence: Any) -> None:
    """The version the evidence (or a `registered` event of state.json) names is this finalization's:
    its tags, set in the store when wf registered it, name the finalization's run and hold the
    SHA-256 of the torch.export program the evidence records (when it exported one). Both files are
    committed; an edit naming another version is refused."""
    from mlflow_core.monitoring.mlflow_store import require_mlflow

    require_mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    export = next((e for e in evidence.facts.exports if e.kind == "torch_export" and e.sha256), None)
    try:
        tags = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(registered.name,
                                                                                  registered.version).tags
    except MlflowException as exc:
        raise UserInputError(f"MLflow at {uri}: {registered.name} version {registered.version}, which state.json says "
                             f"`wf release` registered, cannot be read: {str(exc).splitlines()[0]}") from None
    if tags.get("wf.run_id") != evidence.run_id or (export is not None and tags.get("wf.export_sha256") != export.sha256):
        raise UserInputError(f"{registered.name} version {registered.version}, which the committed record names, does "
                             f"not hold this finalization's export (its wf.run_id and wf.export_sha256 tags are not "
                             f"run {evidence.run_id} and the SHA-256 its evidence records).",
                             hint="Restore .wf/ from version control, or run `wf phase finalization` again.")


def _set_alias(registered, alias: str, uri: str, override: str | None = None) -> None:
    from mlflow_core.monitoring.mlflow_store import require_mlflow

    require_mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.set_registered_model_alias(registered.name, alias, registered.version)
        client.set_model_version_tag(registered.name, registered.version, "wf.gate.pre_release", "passed")
        client.set_model_version_tag(registered.name, registered.version, "wf.released_as", alias)
        if override:  # released past a gate on the path: said where the version is looked up
            client.set_model_version_tag(registered.name, registered.version, "wf.release.override", override)
    except MlflowException as exc:
        raise UserInputError(f"MLflow at {uri} refused the alias: {str(exc).splitlines()[0]}",
                             hint="Check that the store is reachable and holds the version "
                                  f"({registered.model_uri}).") from None
