"""`weightkit checksum`: write an md5sum-format list of a folder's files (the publisher's side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from weightkit.cli.options import progress, subcommand
from weightkit.io.hashing import ALGOS


@subcommand("checksum")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--algo",
    type=click.Choice(list(ALGOS)),
    default="md5",
    show_default=True,
    help="Hash algorithm.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Where to write the list. Default: checksums.<algo> inside PATH.",
)
def command(**kwargs: Any) -> Any:
    """Write an md5sum-format checksum list for the files in PATH, sorted by path.

    Hidden files (.git, .cache, .gitattributes) are left out. `weightkit verify PATH` then checks
    against it, and so does `md5sum -c` from inside PATH.
    """
    from weightkit.ops.verify import write_checksums

    return write_checksums(**kwargs, progress=progress())
