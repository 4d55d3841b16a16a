"""Showing a library result: the human summary on stderr (stdout keeps what a script reads: a
verify table, a commit URL), or with --json one JSON object on stdout. The exit code is 1 for a
result that reports a failure (a verify that found a mismatch), else 0."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from weightkit.cli.errors import flag_text

_STYLES = {"ok": "green", "MISMATCH": "bold red", "missing": "bold red", "extra": "yellow"}


def render(result: Any, command: click.Command | None, *, as_json: bool, quiet: bool) -> int:
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
    else:
        on_stdout = _STDOUT.get(type(result).__name__)
        if on_stdout is not None:
            on_stdout(result)
        if not quiet:
            say(flag_text(result.summary(), command))
    return 0 if getattr(result, "ok", True) else 1


def say(text: str) -> None:
    """A summary or note for people, on stderr."""
    Console(stderr=True).print(text, highlight=False, soft_wrap=True)


def print_table(report: Any) -> None:
    """A verify report's rows: file (or tensor), expected, actual, verdict, note."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    table.add_column("tensor" if report.kind == "tensors" else "file", overflow="fold")
    table.add_column("expected", overflow="fold")
    table.add_column("actual", overflow="fold")
    table.add_column("verdict", no_wrap=True)
    notes = any(r.note for r in report.rows)
    if notes:
        table.add_column("note")
    for r in report.rows:
        cells = [
            r.name,
            r.expected or "-",
            r.actual or "-",
            f"[{_STYLES[r.verdict]}]{r.verdict}[/]",
        ]
        table.add_row(*cells, *([r.note] if notes else []))
    # piped output keeps whole hashes on one line instead of folding them at 80 columns
    console = Console(width=None if sys.stdout.isatty() else 400, highlight=False)
    console.print(table)


# what a result shows on stdout besides its summary, by the result's type
_STDOUT: dict[str, Callable[[Any], None]] = {
    "VerifyReport": print_table,
    "PushResult": lambda r: click.echo(r.commit_url),
}
