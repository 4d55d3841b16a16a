"""`weightkit verify`: check a folder against published checksums, or tensors against a manifest."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from weightkit.cli.options import is_quiet, quiet_option, refuses_conflicts
from weightkit.ops.verify import ALGOS, EXTRA, MISMATCH, MISSING, OK, VerifyReport, verify
from weightkit.progress import say

_STYLES = {OK: "green", MISMATCH: "bold red", MISSING: "bold red", EXTRA: "yellow"}


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--manifest", type=click.Path(path_type=Path), metavar="FILE",
              help="Checksum file to check against: md5sum/sha256sum lines `HASH  NAME`, "
                   "or a weightkit tensor manifest.")
@click.option("--known", metavar="NAME",
              help="A manifest shipped with weightkit, e.g. zhixi-13b-diff.")
@click.option("--algo", type=click.Choice(list(ALGOS)),
              help="Hash algorithm. Default: told from the hash length.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), metavar="N",
              help="Files hashed at once. Default: one per CPU core.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--fix", is_flag=True,
              help="Hub repo: remove its damaged blobs (and their links) from the Hugging Face "
                   "cache, so that the next run that reads it downloads them again.")
@quiet_option
@refuses_conflicts
def command(path: Path, manifest: Path | None, known: str | None, algo: str | None,
            jobs: int | None, as_json: bool, fix: bool, quiet: bool) -> None:
    """Check PATH (a folder, or one file in it) against checksums.

    Without --manifest or --known, PATH's own weightkit.manifest.json (every tensor checked),
    Meta's checklist.chk or a checksums.md5 written by `weightkit checksum` is used. Exits 1
    unless every listed file is present and matches; unlisted files are reported as extra.

    PATH may be a Hub repo id (org/name[@revision]) or a release name instead: its snapshot in
    the Hugging Face cache is audited, each blob hashed against the name the cache gave it
    (nothing is downloaded). Exits 1 when one is damaged or gone, also with --fix.
    """
    quiet = is_quiet(quiet)
    report = verify(path, manifest=manifest, known=known, algo=algo, jobs=jobs, quiet=quiet,
                    fix=fix)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        print_table(report)
    say(report.summary(), quiet)
    if not report.ok:
        click.get_current_context().exit(1)


def print_table(report: VerifyReport) -> None:
    table = Table(box=None, pad_edge=False)
    table.add_column("tensor" if report.kind == "tensors" else "file", overflow="fold")
    table.add_column("expected", overflow="fold")
    table.add_column("actual", overflow="fold")
    table.add_column("verdict", no_wrap=True)
    notes = any(r.note for r in report.rows)
    if notes:
        table.add_column("note")
    for r in report.rows:
        cells = [r.name, r.expected or "-", r.actual or "-",
                 f"[{_STYLES[r.verdict]}]{r.verdict}[/]"]
        table.add_row(*cells, *([r.note] if notes else []))
    # piped output keeps whole hashes on one line instead of folding them at 80 columns
    console = Console(width=None if sys.stdout.isatty() else 400, highlight=False)
    console.print(table)
