"""`wf config validate|schema`."""

from __future__ import annotations

from pathlib import Path

import typer

from mlflow_core.cli.output import console, print_json

app = typer.Typer(help="Validate the training config or print its JSON Schema.", no_args_is_help=True)


@app.command()
def validate(file: Path = typer.Argument(None, help="Config file (default: the project's training_config.yaml).")) -> None:
    """Validate a config: every problem at once, each with its field path and line. Exit 2 if invalid."""
    from mlflow_core.config import CONFIG_FILENAME, load_config
    from mlflow_core.workflow.project import Project

    if file is None:  # the one here, else the enclosing project's
        file = Path(CONFIG_FILENAME) if Path(CONFIG_FILENAME).exists() else Project.find().config_path
    path = file
    cfg = load_config(path)
    console.print(f"[green]✔[/] {path}: valid ({cfg.data.source} data, {cfg.model.label}, "
                  f"{cfg.training.epochs} epochs, batch {cfg.training.batch_size}, lr {cfg.training.learning_rate:g})")


@app.command()
def schema() -> None:
    """Print the config's JSON Schema (for editor completion and validation)."""
    from mlflow_core.config import WorkflowConfig

    print_json(WorkflowConfig.model_json_schema())
