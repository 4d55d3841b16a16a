"""`weightkit verify`: check a folder against published checksums, or tensors against a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from weightkit.cli.options import subcommand
from weightkit.io.hashing import ALGOS


@subcommand("verify")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--manifest",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Checksum file to check against: md5sum/sha256sum lines `HASH  NAME`, "
    "or a weightkit tensor manifest.",
)
@click.option(
    "--known", metavar="NAME", help="A manifest shipped with weightkit, e.g. zhixi-13b-diff."
)
@click.option(
    "--algo",
    type=click.Choice(list(ALGOS)),
    help="Hash algorithm. Default: told from the hash length.",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    metavar="N",
    help="Files hashed at once. Default: one per CPU core.",
)
@click.option(
    "--fix",
    is_flag=True,
    help="Hub repo: remove its damaged blobs (and their links) from the Hugging Face "
    "cache, so that the next run that reads it downloads them again.",
)
def command(**kwargs: Any) -> Any:
    """Check PATH (a folder, or one file in it) against checksums.

    Without --manifest or --known, PATH's own weightkit.manifest.json (every tensor checked),
    Meta's checklist.chk or a checksums.md5 written by `weightkit checksum` is used. Exits 1
    unless every listed file is present and matches; unlisted files are reported as extra.

    PATH may be a Hub repo id (org/name[@revision]) or a release name instead: its snapshot in
    the Hugging Face cache is audited, each blob hashed against the name the cache gave it
    (nothing is downloaded). Exits 1 when one is damaged or gone, also with --fix.
    """
    from weightkit.cli.options import progress
    from weightkit.ops.verify import verify

    return verify(**kwargs, progress=progress())
