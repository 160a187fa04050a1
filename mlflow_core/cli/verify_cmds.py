"""`wf verify`: recompute the recorded claims from the artifacts."""

from __future__ import annotations

import typer
from rich.markup import escape

from mlflow_core.cli.output import console, print_json

MARKS = {"verified": "[green]✔[/]", "failed": "[red]✘[/]", "unverifiable": "[yellow]?[/]"}


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)


def verify(phase: str = typer.Argument(None, help="The phase whose claims to recompute (default: the current phase)."),
           every: bool = typer.Option(False, "--all", help="Every phase that has recorded evidence, whatever the "
                                      "project's current phase."),
           segments: int = typer.Option(1, "--segments", help="Training segments (an epoch each) to re-train per "
                                        "run, chosen at random now."),
           seed: int = typer.Option(None, "--seed", help="The seed that chooses the segments (printed by every "
                                    "verification, to repeat it)."),
           source: str = typer.Option("runs", "--from", help="Where the runs' checkpoints and kept states are read: "
                                      "runs (the project's runs/ folder) or mlflow (the MLflow runs they were logged "
                                      "to, with monitoring.mlflow_log_checkpoints: true; the data stays local)."),
           as_json: bool = typer.Option(False, "--json", help="Print the verdicts as JSON."),
           ) -> None:
    """Recompute what the evidence claims, from the artifacts: the data hashed again, the best checkpoint
    evaluated again on the recorded split, and training segments chosen at random re-trained from the
    states the run kept, compared bit for bit with the recorded weights. Exit 0 when every claim
    recomputes; 1 when one does not, or cannot be recomputed here (unverifiable fails closed). Needs the
    data and the run's files (runs/, or the MLflow runs they were logged to with --from mlflow), so run
    it where the training ran or on a CI runner that has them."""
    from mlflow_core.errors import UserInputError
    from mlflow_core.orchestration.verify import verify as verify_claims
    from mlflow_core.workflow.project import Project

    if every and phase:
        raise UserInputError("give a phase or --all, not both")
    say = (lambda _m: None) if as_json else (lambda m: console.print(f"[dim]{escape(m)}[/]"))
    result = verify_claims(Project.find(), phase, every=every, segments=segments, seed=seed, source=source,
                           on_message=say)
    if as_json:
        print_json(result.to_json())
        raise typer.Exit(0 if result.passed else 1)
    for checked in result.phases:
        run = f" (run {checked.run_id})" if checked.run_id else ""
        console.print(f"[bold]{checked.phase}[/]{run}")
        for claim in checked.claims:
            console.print(f"  {MARKS[claim.status]} {escape(claim.name)}: {escape(claim.detail)}", highlight=False)
    failed = [c for p in result.phases for c in p.claims if c.status == "failed"]
    unverifiable = [c for p in result.phases for c in p.claims if c.status == "unverifiable"]
    if result.passed:
        console.print(f"Every claim recomputes (segments chosen with --seed {result.seed}).")
    else:
        console.print(f"[red]Not verified[/]: {len(failed)} claim(s) do not recompute, {len(unverifiable)} cannot be "
                      f"recomputed here (segments chosen with --seed {result.seed}).")
    raise typer.Exit(0 if result.passed else 1)
