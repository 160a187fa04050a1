"""`wf release [--alias champion]`: the registered model behind the release gate. The alias is set
on the version `wf phase finalization` registered only when the pre_release gate passes now (what
`wf gate check finalization` checks); otherwise exit 3 naming what is open. The release is recorded
in the history; `wf status` and the summary show it. No torch; MLflow's client only."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlflow_core.errors import GateClosedError, UserInputError
from mlflow_core.workflow.evidence import read_evidence
from mlflow_core.workflow.gates import evaluate_gate
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


def release(project: Project, alias: str = "champion") -> Release:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", alias) or re.fullmatch(r"[vV]\d+", alias):
        raise UserInputError(f"--alias {alias!r}: an alias is letters, digits, - and _, and not v<number> "
                             "(MLflow keeps those for versions)")
    return _release(project, alias)


@locked("wf release --alias {alias}")
def _release(project: Project, alias: str) -> Release:
    state = load_state(project)
    evidence = read_evidence(project, "finalization")
    if evidence is None or not evidence.intact:
        raise UserInputError("there is no finalization to release: no intact .wf/evidence/finalization.json.",
                             hint="Run `wf phase finalization` (with monitoring.mlflow: true) first.")
    registered = evidence.facts.registered
    if registered is None:
        raise UserInputError("the finalization registered no model in MLflow (monitoring.mlflow was off, or "
                             "the registry could not be reached: its log says which).",
                             hint="Set monitoring.mlflow: true in training_config.yaml and run "
                                  "`wf phase finalization` again.")
    gate = evaluate_gate(project, state, "finalization")
    if not gate.passed:
        left = [i.id for i in gate.open_items] + [f"unchanged {d.kind}" for d in gate.drift]
        raise GateClosedError(f"cannot release {registered.name} version {registered.version}: the pre_release "
                              f"gate ({gate.path}) does not pass: {', '.join(left)} open.",
                              hint="`wf gate check finalization` shows each item and how to close it.")
    uri = _store_of(project, registered.tracking_uri)
    _set_alias(registered, alias, uri)
    state.record("release", model=registered.name, version=registered.version, alias=alias,
                 run_id=evidence.run_id, by=who())
    save_state(project, state)
    return Release(registered.name, registered.version, alias, f"models:/{registered.name}@{alias}", uri)


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


def _set_alias(registered, alias: str, uri: str) -> None:
    from mlflow_core.monitoring.mlflow_store import require_mlflow

    require_mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.set_registered_model_alias(registered.name, alias, registered.version)
        client.set_model_version_tag(registered.name, registered.version, "wf.gate.pre_release", "passed")
        client.set_model_version_tag(registered.name, registered.version, "wf.released_as", alias)
    except MlflowException as exc:
        raise UserInputError(f"MLflow at {uri} refused the alias: {str(exc).splitlines()[0]}",
                             hint="Check that the store is reachable and holds the version "
                                  f"({registered.model_uri}).") from None
