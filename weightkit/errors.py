"""The one error type weightkit raises for anything a user can fix.

The CLI prints it in one place (weightkit.cli.main) as a single message and exits non-zero;
library users catch it like any exception.
"""

from __future__ import annotations

from typing import Any


class WeightkitError(Exception):
    """A failure explained in words: what went wrong, where, and what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, *, result: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # what was done before the failure (a result with summary() and to_dict(): a download
        # that does not match its manifest, a dry run's would-download report), shown first
        self.result = result

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class InputError(WeightkitError):
    """An input checkpoint, adapter or manifest is missing, malformed or does not fit."""


class OptionConflict(InputError):
    """Two options that contradict each other (--fp16 with --dtype bf16): refused before any
    work, never settled by silently obeying one. The command line shows it as a usage error."""

    exit_code = 2


class ChecksumError(WeightkitError):
    """Something was read or written whose hash is not the one expected."""


class OutputError(WeightkitError):
    """The output cannot be written where it was asked for (exists, no space, read-only)."""
