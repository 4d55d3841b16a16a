"""Library text in the command line's words, and errors shown in one form.

The library names its parameters in backquotes (`max_shard_size`, `dtype` fp32); a command's
message names its flags instead (--max-shard-size, --dtype fp32). The command's own click
parameters say which flag (or argument) sets each parameter, so no table repeats them.
"""

from __future__ import annotations

import json
import re
from typing import Any

import click

_PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")


def flag_text(text: str, command: click.Command | None) -> str:
    """`text` with each backquoted parameter the command has replaced by its flag (or the
    argument's metavar); parameters of another command read as plain words."""
    params = {p.name: p for p in command.params} if command is not None else {}

    def flag(m: re.Match[str]) -> str:
        param = params.get(m.group(1))
        if isinstance(param, click.Option):
            return max(param.opts, key=len)  # --max-shard-size, not -s
        if isinstance(param, click.Argument):
            return param.human_readable_name  # PATH, REPO_OR_RELEASE
        return m.group(1)

    return _PARAMETER.sub(flag, text)


def show_error(message: str, hint: str | None, as_json: bool, done: Any = None) -> None:
    """One message: `Error: ...` and the hint on stderr, or {"error", "hint"} on stdout (with
    "result": what was done before the failure, where the error carries it)."""
    if as_json:
        doc = {"error": message, "hint": hint}
        click.echo(json.dumps(doc if done is None else {**doc, "result": done.to_dict()}))
        return
    click.echo(f"Error: {message}", err=True)
    if hint:
        click.echo(hint, err=True)
