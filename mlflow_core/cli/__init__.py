"""The `wf` command line: a thin layer that parses, calls one core function and renders with rich.

Never imports torch at module level: `status`, `gate`, `checklist`, `config` and `report` must stay
fast (a test guards this). That is why every command module imports the core inside its commands:
`wf --help` and `wf status` load only what they run, and the one command that trains pays for torch.
"""

from __future__ import annotations

import sys

import typer

from mlflow_core import __version__
from mlflow_core.cli import (
    checklist_cmds,
    ci_cmds,
    config_cmds,
    data_cmds,
    diagnose_cmds,
    gate_cmds,
    phase_cmds,
    project_cmds,
    release_cmds,
    slurm_cmds,
    tune_cmds,
    verify_cmds,
)
from mlflow_core.cli.output import err_console, widen_when_not_a_terminal
from mlflow_core.errors import WfError

EPILOG = ("Exit codes: 0 success · 1 a phase failed its success criteria, or a gate does not pass · "
          "2 bad input · 3 the entry gate is closed · 4 the project is in use · 5 a write was refused "
          "(disk full, read-only) · 6 a data-parallel run lost a process · 124 --time-limit reached · "
          "129 SIGHUP (the terminal closed) · 130 Ctrl-C · 138 SIGUSR1 (SLURM preemption) · 143 SIGTERM.")

app = typer.Typer(name="wf", help="Phase-gated, reproducible, reviewable PyTorch training: "
                  "setup → baseline → diagnostics → optimization → finalization.",
                  epilog=EPILOG, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode=None)
app.add_typer(config_cmds.app, name="config")
app.add_typer(gate_cmds.app, name="gate")
app.add_typer(checklist_cmds.app, name="checklist")
app.add_typer(data_cmds.app, name="data")
app.add_typer(ci_cmds.app, name="ci")
project_cmds.register(app)
phase_cmds.register(app)
diagnose_cmds.register(app)
tune_cmds.register(app)
slurm_cmds.register(app)
release_cmds.register(app)
verify_cmds.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Phase-gated, reproducible, reviewable PyTorch training."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place where errors become messages and exit codes. Usage errors are
    click's (exit 2); everything wf expects is a WfError carrying its exit code."""
    widen_when_not_a_terminal()
    try:
        _run(argv)
    except SystemExit as done:
        _leave_if_following(done.code)
        raise
    _leave_if_following(0)


def _run(argv: list[str] | None) -> None:
    try:
        app(args=argv, prog_name="wf")
    except WfError as exc:
        from mlflow_core.workflow.datafiles import discard_created_manifests
        from mlflow_core.world import world_from_env

        discard_created_manifests()  # a refused command leaves no file behind

        world = world_from_env()
        rank = f"(rank {world.rank}) " if world is not None else ""
        from rich.markup import escape  # a message quotes what people wrote: `- [x]Text` is not markup

        err_console.print(f"[bold red]error:[/] {rank}{escape(exc.message)}", markup=True, highlight=False,
                          soft_wrap=True)
        if exc.hint:
            err_console.print(exc.hint, markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


def _leave_if_following(code: object) -> None:
    """A DDP rank other than 0 that took part in a process group ends here, without the
    interpreter's shutdown (launch.leave_process says why); every other process exits as usual."""
    if "torch.distributed" not in sys.modules:  # it never trained: nothing of torch's to outlive it
        return
    from mlflow_core.world import world_from_env

    world = world_from_env()
    if world is not None and not world.is_writer:
        from mlflow_core.orchestration.launch import leave_process

        leave_process(code)
