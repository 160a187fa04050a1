"""Rich consoles and small renderers shared by the command modules."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def mark(ok: bool) -> str:
    return "[green]✔[/]" if ok else "[red]✘[/]"


def gate_table(verdict: Any) -> Table:
    table = Table(title=f"{verdict.phase} gate · {verdict.path}", title_justify="left", expand=False)
    table.add_column("", width=1)
    table.add_column("id")
    table.add_column("kind")
    table.add_column("item")
    table.add_column("evidence", overflow="fold")
    for item in verdict.items:
        table.add_row(mark(item.checked), item.id, item.kind, item.text, item.evidence)
    return table
