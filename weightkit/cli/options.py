"""Options shared by several commands, declared once."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from weightkit.errors import OptionConflict, WeightkitError

DTYPES = ["auto", "fp32", "fp16", "bf16"]


def refuses_conflicts(f: Callable[..., Any]) -> Callable[..., Any]:
    """The library refuses options that contradict each other (OptionConflict); a command shows
    that as click's usage error (exit code 2). Put it right above the command's `def`."""

    @functools.wraps(f)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except OptionConflict as e:
            raise click.UsageError(str(e)) from None  # with its hint

    return command


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


@contextmanager
def parameters_as_flags(flags: dict[str, str]) -> Iterator[None]:
    """Library messages name parameters in backquotes (`only_lora`); show this command's flag
    (--only-lora) instead. `flags`: parameter -> flag."""
    try:
        yield
    except WeightkitError as e:
        for name, flag in flags.items():
            e.message = e.message.replace(f"`{name}`", flag)
            e.hint = e.hint and e.hint.replace(f"`{name}`", flag)
        e.args = (e.message,)
        raise
