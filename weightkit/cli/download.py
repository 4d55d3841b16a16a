"""weightkit download REPO_OR_RELEASE --out DIR"""

from __future__ import annotations

from typing import Any

import click

from weightkit.cli.options import hub_options, no_verify_option, subcommand


@subcommand("download")
@click.argument("repo_or_release")
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to download into; an interrupted download there resumes.",
)
@click.option(
    "--only-lora",
    is_flag=True,
    help="Release: its LoRA repo. Repo: only adapter_config.json and adapter_model.*.",
)
@click.option(
    "--only-base",
    is_flag=True,
    help="Release: its diff repo. Repo: everything but the adapter files.",
)
@click.option("--fp16", is_flag=True, help="Release: its fp16 diff repo.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching (repeatable).")
@click.option("--revision", help="Branch, tag or commit (default: main).")
@no_verify_option("Skip the catalog manifest check (each file's Hub hash is still checked).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="List what would be downloaded and check the disk; download nothing.",
)
@hub_options(jobs=True)
def command(**kwargs: Any) -> Any:
    """Download a Hub repo (org/name) or a catalog release (e.g. zhixi-13b) into OUT, resuming
    from whatever an earlier run left and checking every file's hash."""
    from weightkit.hub.download import download

    return download(**kwargs)
