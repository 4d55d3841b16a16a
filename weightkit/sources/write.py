"""Writing a source: every command's last step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from weightkit.checkpoint import write_checkpoint
from weightkit.io.output import OutputFolder
from weightkit.manifest import Manifest
from weightkit.options import WriteOptions
from weightkit.results import WriteResult
from weightkit.sources.source import Source


def write_source(
    source: Source,
    out: str | Path,
    *,
    title: str,
    options: WriteOptions,
    notes: Sequence[str] = (),
    log: Sequence[str] = (),
    expected: Manifest | None = None,
    expected_what: str = "the expected model",
    finish: Callable[[Path], list[str]] | None = None,
    side_manifest: Manifest | None = None,
) -> WriteResult:
    """Write every tensor of `source`, computed in one pass, into a new checkpoint folder at
    `out`, with its config and tokenizer files (the rest as write_checkpoint takes it; the
    source's notes come first)."""
    return write_checkpoint(
        out,
        [source.node(name) for name in source.names()],
        title=title,
        inputs=source.inputs,
        options=options,
        side_files=() if options.dry_run else source.side_files(),
        notes=[*source.notes, *notes],
        log=log,
        expected=expected,
        expected_what=expected_what,
        finish=finish,
        side_manifest=side_manifest,
    )


def check_output(
    out: str | Path, inputs: list[Path], options: WriteOptions, needed_bytes: int = 0
) -> None:
    """Refuse a wrong `out` before work that takes long (hashing a raw Meta folder's shards,
    downloading); the writer checks again, with every input. (`options` were checked when they
    were made.)"""
    OutputFolder(out, inputs=inputs, overwrite=options.overwrite, needed_bytes=needed_bytes)
