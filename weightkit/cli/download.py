"""weightkit download REPO_OR_RELEASE --out DIR"""

from __future__ import annotations

import click

from weightkit.cli.options import (
    dry_run_option,
    endpoint_option,
    is_quiet,
    parameters_as_flags,
    quiet_option,
    refuses_conflicts,
)

FLAGS = {"only_lora": "--only-lora", "only_base": "--only-base", "fp16": "--fp16",
         "revision": "--revision", "verify": "--no-verify", "out": "--out",
         "endpoint": "--endpoint", "jobs": "--jobs", "dry_run": "--dry-run"}


@click.command("download")
@click.argument("repo_or_release")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder to download into; an interrupted download there resumes.")
@click.option("--only-lora", is_flag=True,
              help="Release: its LoRA repo. Repo: only adapter_config.json and adapter_model.*.")
@click.option("--only-base", is_flag=True,
              help="Release: its diff repo. Repo: everything but the adapter files.")
@click.option("--fp16", is_flag=True, help="Release: its fp16 diff repo.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching (repeatable).")
@click.option("--revision", help="Branch, tag or commit (default: main).")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Files downloaded at once.")
@click.option("--no-verify", is_flag=True,
              help="Skip the catalog manifest check (each file's Hub hash is still checked).")
@endpoint_option
@dry_run_option
@quiet_option
@refuses_conflicts
def command(repo_or_release: str, out: str, only_lora: bool, only_base: bool, fp16: bool,
            include: tuple[str, ...], exclude: tuple[str, ...], revision: str | None, jobs: int,
            no_verify: bool, endpoint: str | None, dry_run: bool, quiet: bool) -> None:
    """Download a Hub repo (org/name) or a catalog release (e.g. zhixi-13b) into OUT, resuming
    from whatever an earlier run left and checking every file's hash."""
    from weightkit.hub.download import ManifestMismatch, download
    from weightkit.options import HubOptions

    quiet = is_quiet(quiet)
    with parameters_as_flags(FLAGS):
        try:
            result = download(repo_or_release, out, only_lora=only_lora, only_base=only_base,
                              fp16=fp16, include=include, exclude=exclude, revision=revision,
                              verify=not no_verify, dry_run=dry_run,
                              hub=HubOptions(endpoint=endpoint, jobs=jobs, progress=not quiet))
        except ManifestMismatch as e:  # what was fetched and checked, then the error
            if not quiet:
                click.echo(e.result.summary(), err=True)
            raise
    if not quiet:
        click.echo(result.summary(), err=True)
