"""`wf release`."""

from __future__ import annotations

import typer

from mlflow_core.cli.output import console


def register(app: typer.Typer) -> None:
    app.command("release")(release)


def release(alias: str = typer.Option("champion", "--alias", help="The MLflow alias to point at the version "
                                      "finalization registered."),
            override_gate: str = typer.Option(None, "--override-gate", metavar="REASON",
                                              help="Release although a gate on the path to finalization does not "
                                              "hold (the pre_release gate itself always must); recorded with the "
                                              "reason in the history and on the version's tags.")) -> None:
    """Release the model that `wf phase finalization` registered in MLflow: set its alias, only when
    the pre_release gate passes and every gate on the path to it holds (exit 3 naming what does not
    otherwise); recorded in the history."""
    from mlflow_core.orchestration.release import release as release_model
    from mlflow_core.workflow.project import Project

    done = release_model(Project.find(), alias, override_gate)
    console.print(f"[green]✔[/] {done.name} version {done.version} released as @{done.alias}: "
                  f"load it with `mlflow.pytorch.load_model(\"{done.model_uri}\")` (tracking URI {done.tracking_uri})",
                  highlight=False)
