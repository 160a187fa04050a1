"""Rich consoles and small renderers shared by the command modules."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table


class _TolerantStream:
    """sys.stdout (or stderr), looked up at each write, that a reader going away cannot fail: the
    first write refused with EPIPE or EIO (`wf phase baseline | head -3`, a closed SSH session) sends
    the stream to /dev/null, and the command goes on. A training run keeps everything it says in
    runs/<run>/logs/training.log, so nothing is lost with the terminal."""

    def __init__(self, name: str):
        self.name = name

    @property
    def target(self) -> Any:
        return getattr(sys, self.name)

    def write(self, text: str) -> int:
        try:
            return self.target.write(text)
        except OSError as exc:
            return self._gone(exc, len(text))

    def flush(self) -> None:
        try:
            self.target.flush()
        except OSError as exc:
            self._gone(exc, 0)

    def _gone(self, exc: OSError, written: int) -> int:
        if exc.errno not in (errno.EPIPE, errno.EIO, errno.ECONNRESET):
            raise exc
        devnull = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - replaces the stream for good
        # also the interpreter's own flush at exit, which would print BrokenPipeError otherwise
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(devnull.fileno(), self.target.fileno())
        setattr(sys, self.name, devnull)
        return written

    def __getattr__(self, attr: str) -> Any:  # isatty, fileno, encoding…: the real stream's
        return getattr(self.target, attr)


console = Console(file=_TolerantStream("stdout"), highlight=False)
err_console = Console(file=_TolerantStream("stderr"), highlight=False)

# Output to a file or pipe (a SLURM log, CI) has no width: rich would wrap it at 80 columns, cells of
# `wf runs` over five lines and the last progress line cut short. COLUMNS, where set, still decides.
UNWRAPPED_WIDTH = 200


def widen_when_not_a_terminal() -> None:
    for c in (console, err_console):
        if not c.is_terminal and not os.environ.get("COLUMNS"):
            c.width = UNWRAPPED_WIDTH


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def mark(ok: bool) -> str:
    return "[green]✔[/]" if ok else "[red]✘[/]"


def gate_table(verdict: Any) -> Table:
    run = verdict.run or {}
    judged = f" · judges run {run['run_id']} ({run['selected_by']})" if run else ""
    table = Table(title=f"{verdict.phase} gate · {verdict.path}{judged}", title_justify="left", expand=False)
    table.add_column("", width=1)
    table.add_column("id")
    table.add_column("kind")
    table.add_column("item")
    table.add_column("evidence", overflow="fold")
    for item in verdict.items:
        sign = "[yellow]~[/]" if item.waived else mark(item.checked)
        kind = item.kind + (" (required)" if item.required and item.line == 0 else "")
        table.add_row(sign, item.id, kind, escape(item.text), escape(item.evidence))
    return table


def print_gate(verdict: Any, records: Any = ()) -> None:
    """A gate's table, what drifted since it passed, waivers and overrides on record (provenance.OnRecord,
    with who committed them), and its verdict."""
    console.print(gate_table(verdict))
    for drift in verdict.drift:
        console.print(f"[red]changed since the gate verified it[/] ({drift.kind}): {escape(drift.detail)}")
    for note in verdict.notes:
        console.print(f"[dim]not compared here: {escape(note)}[/]")
    for record in records:
        console.print(f"[yellow]{record.kind} on record[/]: {escape(record.where)} {escape(record.shown())} — "
                      f"{escape(record.reason)}", highlight=False)
    left = len(verdict.open_items)
    if verdict.passed:
        status = "[green]passes[/]"
    elif verdict.drift:
        status = f"[red]re-opened[/]: {verdict.rerun()}" + (f" ({left} item{'s' if left != 1 else ''} left)" if left else "")
    else:
        status = f"[red]is closed[/] ({left} item{'s' if left != 1 else ''} left)"
    console.print(f"The {verdict.phase} gate {status}.")
