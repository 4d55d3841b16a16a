"""weightkit push DIR REPO"""

from __future__ import annotations

from typing import Any

import click

from weightkit.cli.options import hub_options, subcommand


@subcommand("push")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.argument("repo")
@click.option("--private", is_flag=True, help="Create the repo private (if it does not exist).")
@click.option("--revision", help="Branch to commit to, created if missing (default: main).")
@click.option("--message", "-m", help="Commit message.")
@hub_options()
def command(**kwargs: Any) -> Any:
    """Upload FOLDER to the Hub repo REPO (org/name), creating it if needed; files the repo
    already has are not sent again. Prints the commit URL."""
    from weightkit.hub.push import push

    return push(**kwargs)
