"""weightkit push DIR REPO"""

from __future__ import annotations

import click

from weightkit.cli.options import endpoint_option, is_quiet, parameters_as_flags, quiet_option

FLAGS = {"revision": "--revision", "endpoint": "--endpoint"}


@click.command("push")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.argument("repo")
@click.option("--private", is_flag=True, help="Create the repo private (if it does not exist).")
@click.option("--revision", help="Branch to commit to, created if missing (default: main).")
@click.option("--message", "-m", help="Commit message.")
@endpoint_option
@quiet_option
def command(folder: str, repo: str, private: bool, revision: str | None, message: str | None,
            endpoint: str | None, quiet: bool) -> None:
    """Upload FOLDER to the Hub repo REPO (org/name), creating it if needed; files the repo
    already has are not sent again. Prints the commit URL."""
    from weightkit.hub.push import push
    from weightkit.options import HubOptions

    quiet = is_quiet(quiet)
    with parameters_as_flags(FLAGS):
        result = push(folder, repo, private=private, revision=revision, message=message,
                      hub=HubOptions(endpoint=endpoint, progress=not quiet))
    if not quiet:
        click.echo(result.summary(), err=True)
    click.echo(result.commit_url)
