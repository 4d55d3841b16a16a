"""What every command shares: its --quiet and --json, the flags of the option families (built
from weightkit.options' fields, so a default or choice list is written once), and the step
that hands the library's result to weightkit.cli.render."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import click

from weightkit.cli.errors import flag_text
from weightkit.errors import OptionConflict, WeightkitError
from weightkit.options import DTYPES, HubOptions, WriteOptions

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

__all__ = [
    "DTYPES",
    "dtype_option",
    "hub_options",
    "is_quiet",
    "no_verify_option",
    "out_option",
    "progress",
    "subcommand",
    "write_options",
]


class Conflict(click.UsageError):
    """The library's OptionConflict as click's usage error (exit code 2), hint kept apart."""

    def __init__(self, message: str, hint: str | None) -> None:
        super().__init__(message if not hint else f"{message}\n{hint}")
        self.message_only, self.hint = message, hint


def subcommand(name: str) -> Decorator:
    """A weightkit subcommand: its function returns the library's result, which is shown
    here (the human summary, or one JSON object with --json); --quiet and --json added."""

    def decorate(f: Callable[..., Any]) -> click.Command:
        @functools.wraps(f)
        def run(*args: Any, quiet: bool, as_json: bool, **kwargs: Any) -> None:
            from weightkit.cli.render import render

            ctx = click.get_current_context()
            root = ctx.find_root()
            quiet = is_quiet(quiet)
            root.obj = {**(root.obj or {}), "quiet": quiet}  # read by the option families
            try:
                result = f(*args, **kwargs)
            except OptionConflict as e:
                raise Conflict(
                    flag_text(e.message, ctx.command), e.hint and flag_text(e.hint, ctx.command)
                ) from None
            except WeightkitError as e:
                # what was done before the failure (a download that does not match its
                # manifest: what was fetched and checked), read before the error
                if e.result is not None and not (as_json or quiet):
                    render(e.result, ctx.command, as_json=False, quiet=False)
                raise
            code = render(result, ctx.command, as_json=as_json, quiet=quiet)
            if code:
                ctx.exit(code)

        run = click.option(
            "--json",
            "as_json",
            is_flag=True,
            help="Print the result (or an error) as one JSON object on stdout.",
        )(run)
        run = click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")(run)
        params = run.__click_params__  # type: ignore[attr-defined]  # click's own list
        params[:] = params[-2:] + params[:-2]  # listed last in --help
        return click.command(name)(run)

    return decorate


def progress() -> bool | None:
    """Progress bars on stderr: none with --quiet, else where a person watches (a terminal)."""
    return False if is_quiet() else None


def is_quiet(quiet: bool = False) -> bool:
    """True when --quiet was given to the command or to `weightkit` itself."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root().obj if ctx is not None else None
    return quiet or bool(root and root.get("quiet"))


def _flags(cls: type, skip: tuple[str, ...]) -> list[tuple[str, Callable[..., Any]]]:
    """(field name, click.option) for each field of `cls` the command line sets."""
    made = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("cli", True) is False or f.name in skip:
            continue
        kwargs: dict[str, Any] = {"help": meta.get("help"), "default": f.default}
        if f.type in ("bool", bool):
            kwargs["is_flag"] = True
        else:
            kwargs["show_default"] = f.default is not None
        if "choices" in meta:
            kwargs["type"] = click.Choice(list(meta["choices"]))
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        if "range" in meta:
            kwargs["type"] = click.IntRange(*meta["range"])
        names = [f"--{f.name.replace('_', '-')}", *([meta["short"]] if "short" in meta else [])]
        made.append((f.name, click.option(*names, f.name, **kwargs)))
    return made


def _family(cls: type, param: str, skip: tuple[str, ...]) -> Decorator:
    """Add `cls`'s flags to a command; its function gets them as one `param`=cls(...)."""
    flags = _flags(cls, skip)

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def with_options(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name, _ in flags}
            kwargs[param] = cls(**given, progress=progress())
            return f(*args, **kwargs)

        for _, option in reversed(flags):
            with_options = option(with_options)
        return with_options

    return decorate


def out_option(what: str) -> Decorator:
    """--out for a command that writes a checkpoint folder."""
    return click.option(
        "--out", required=True, type=click.Path(), help=f"Folder to write {what} into."
    )


def dtype_option(default: str, choices: tuple[str, ...], help: str) -> Decorator:
    """--dtype of what a command writes."""
    return click.option(
        "--dtype", type=click.Choice(list(choices)), default=default, show_default=True, help=help
    )


def no_verify_option(help: str) -> Decorator:
    """--no-verify, which sets the library's `verify` to False."""
    return click.option(
        "--no-verify", "verify", is_flag=True, flag_value=False, default=True, help=help
    )


def write_options(*, device: bool = True) -> Decorator:
    """--format, --max-shard-size, --overwrite, --device (unless `device` is False: the command
    has no arithmetic to place) and --dry-run, given to the command as `options`."""
    return _family(WriteOptions, "options", () if device else ("device",))


def hub_options(*, jobs: bool = False) -> Decorator:
    """--endpoint (and --jobs with `jobs`), given to the command as `hub`."""
    return _family(HubOptions, "hub", () if jobs else ("jobs",))
