"""`weightkit checksum`: write an md5sum-format list of a folder's files (the publisher's side)."""

from __future__ import annotations

from pathlib import Path

import click

from weightkit.cli.options import is_quiet, quiet_option
from weightkit.ops.verify import ALGOS, write_checksums
from weightkit.progress import say


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--algo", type=click.Choice(list(ALGOS)), default="md5", show_default=True,
              help="Hash algorithm.")
@click.option("--out", type=click.Path(path_type=Path), metavar="FILE",
              help="Where to write the list. Default: checksums.<algo> inside PATH.")
@quiet_option
def command(path: Path, algo: str, out: Path | None, quiet: bool) -> None:
    """Write an md5sum-format checksum list for the files in PATH, sorted by path.

    Hidden files (.git, .cache, .gitattributes) are left out. `weightkit verify PATH` then checks
    against it, and so does `md5sum -c` from inside PATH.
    """
    quiet = is_quiet(quiet)
    written = write_checksums(path, algo=algo, out=out, quiet=quiet)
    lines = written.read_text(encoding="utf-8").count("\n")
    say(f"checksum: wrote {lines} {algo} line(s) to {written}.", quiet)
