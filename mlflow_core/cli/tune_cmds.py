"""`wf lr-find`."""

from __future__ import annotations

import typer

from mlflow_core.cli.output import console, print_json


def register(app: typer.Typer) -> None:
    app.command("lr-find")(lr_find)


def lr_find(start_lr: float = typer.Option(1e-7, "--start-lr", min=1e-12, help="First learning rate."),
            end_lr: float = typer.Option(10.0, "--end-lr", help="Last learning rate."),
            steps: int = typer.Option(100, "--steps", min=10, max=10000, help="Training steps, one per learning rate."),
            as_json: bool = typer.Option(False, "--json", help="Print the sweep as JSON.")) -> None:
    """LR range test: grow the learning rate exponentially from a fresh model and suggest one."""
    from mlflow_core.errors import UserInputError
    from mlflow_core.orchestration.lr_find import find_lr
    from mlflow_core.workflow.project import Project

    if not start_lr < end_lr:
        raise UserInputError(f"--start-lr ({start_lr:g}) must be below --end-lr ({end_lr:g}).")
    result = find_lr(Project.find(), start_lr=start_lr, end_lr=end_lr, steps=steps)
    if as_json:
        print_json(result)
        return
    console.print(f"{len(result['lrs'])} steps from {start_lr:g}: {result['stop_reason']}.")
    if result.get("suggested_lr"):
        console.print(f"Suggested learning rate: [bold]{result['suggested_lr']:.3g}[/] ({result['rule']}); "
                      f"minimum-loss LR ÷ 10: {result['min_loss_lr_div10']:.3g}; configured: {result['configured_lr']:g}.")
    else:
        console.print(f"No suggestion: {result['rule']}.")
    if result.get("figure"):
        console.print(f"Plot: {result['figure']}")
