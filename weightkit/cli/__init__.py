"""The `weightkit` command line: a thin shell over the library.

Each subcommand lives in its own module and is imported only when it runs, so `weightkit --help`
does not pay for torch. Errors are printed here, in one place.
"""

from __future__ import annotations

import importlib.util  # find_spec; `import importlib` alone does not load .util
import os
import sys

import click

from weightkit import __version__

# command name -> module under weightkit.cli holding a click command called `command`
COMMANDS = {
    "convert": "convert",
    "diff": "diff",
    "recover": "recover",
    "merge-lora": "merge_lora",
    "verify": "verify",
    "checksum": "checksum",
    "download": "download",
    "push": "push",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, mod in COMMANDS.items() if _module_exists(mod))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        mod = COMMANDS.get(name)
        if mod is None or not _module_exists(mod):
            return None
        return importlib.import_module(f"weightkit.cli.{mod}").command


def _module_exists(mod: str) -> bool:
    return importlib.util.find_spec(f"weightkit.cli.{mod}") is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="weightkit")
@click.option("--debug", is_flag=True, help="Show full Python tracebacks on errors.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or summaries (for scripts).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Streaming, bit-exact tools for LLM checkpoints."""
    ctx.obj = {"debug": debug, "quiet": quiet}


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every failure into one message and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("WEIGHTKIT_DEBUG") == "1"
    sys.exit(_run(args, debug))


def _run(args: list[str], debug: bool) -> int:
    from weightkit.cli.errors import flag_text, show_error
    from weightkit.errors import WeightkitError

    as_json = "--json" in args
    try:
        # non-standalone click returns ctx.exit()'s code instead of raising it
        rc = cli.main(args=args, prog_name="weightkit", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        if not as_json:
            e.show()
        else:
            show_error(
                getattr(e, "message_only", e.format_message()), getattr(e, "hint", None), as_json
            )
        return e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        if as_json:
            show_error("interrupted; no finished output was left behind.", None, as_json)
        else:
            click.echo("weightkit: interrupted; no finished output was left behind.", err=True)
        return 130
    except WeightkitError as e:
        if debug:
            raise
        command = _command_of(args)
        show_error(
            flag_text(e.message, command), e.hint and flag_text(e.hint, command), as_json, e.result
        )
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - the one place that turns surprises into a message
        if debug:
            raise
        show_error(
            f"unexpected {type(e).__name__}: {e}",
            "Run again with --debug for the full traceback, and report it.",
            as_json,
        )
        return 1


def _command_of(args: list[str]) -> click.Command | None:
    """The subcommand `args` runs (its flags name the library's parameters in messages)."""
    name = next((a for a in args if a in COMMANDS), None)
    return cli.get_command(click.Context(cli), name) if name else None
