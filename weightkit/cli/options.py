"""Options shared by several commands, declared once."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import click

from weightkit.errors import OptionConflict

DTYPES = ["auto", "fp32", "fp16", "bf16"]


def refuses_conflicts(f: Callable[..., Any]) -> Callable[..., Any]:
    """The library refuses options that contradict each other (OptionConflict); a command shows
    that as click's usage error (exit code 2). Put it right above the command's `def`."""

    @functools.wraps(f)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except OptionConflict as e:
            raise click.UsageError(flags(str(e))) from None  # with its hint

    return command


# parameter -> flag where the flag is not --NAME (library messages name parameters)
_FLAGS = {"verify": "--no-verify", "diff": "--diff"}
_PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")


def flags(text: str | None) -> str | None:
    """A library message as the command line says it: `max_shard_size` -> --max-shard-size."""
    if text is None:
        return None
    return _PARAMETER.sub(lambda m: _FLAGS.get(m[1], "--" + m[1].replace("_", "-")), text)


def write_options(out_format: str, max_shard_size: str, overwrite: bool, device: str,
                  dry_run: bool, quiet: bool) -> Any:
    """The WriteOptions the flags ask for (bars unless quiet)."""
    from weightkit.options import WriteOptions

    return WriteOptions(format=out_format, max_shard_size=max_shard_size, overwrite=overwrite,
                        device=device, dry_run=dry_run, progress=not quiet)


def show(result: Any, quiet: bool) -> None:
    """Print a command's summary on stderr, unless quiet."""
    from weightkit.progress import say

    say(result.summary(), quiet)


def quiet_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")(f)


def is_quiet(quiet: bool) -> bool:
    """True when --quiet was given to the command or to `weightkit` itself."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root().obj if ctx is not None else None
    return quiet or bool(root and root.get("quiet"))


def device_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help="Where the arithmetic runs; auto uses CUDA when present. Output bytes are the same.",
    )(f)


def output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--format, --max-shard-size and --overwrite for commands that write a checkpoint."""
    f = click.option(
        "--overwrite", is_flag=True, help="Replace OUT if it already exists."
    )(f)
    f = click.option(
        "--max-shard-size",
        default="5GB",
        show_default=True,
        help="Largest output shard, e.g. 5GB, 500MB, 2GiB.",
    )(f)
    f = click.option(
        "--format",
        "out_format",
        type=click.Choice(["safetensors", "bin"]),
        default="safetensors",
        show_default=True,
        help="Output file format.",
    )(f)
    return f


def dry_run_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--dry-run", is_flag=True,
        help="Check inputs and report disk and memory needs from headers; write nothing.",
    )(f)


def endpoint_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--endpoint", metavar="URL",
        help="Hub endpoint (a mirror); default: HF_ENDPOINT or https://huggingface.co.",
    )(f)
