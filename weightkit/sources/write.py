"""Writing a source: every command's last step."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from weightkit.io.output import OutputFolder
from weightkit.io.writer import check_format, parse_size
from weightkit.pipeline import WriteResult, write_checkpoint
from weightkit.sources.source import Source


def write_source(source: Source, out: str | Path, *, title: str, notes: Sequence[str] = (),
                 **options: Any) -> WriteResult:
    """Write every tensor of `source`, computed in one pass, into a new checkpoint folder at
    `out`, with its config and tokenizer files; `options` are pipeline.write_checkpoint's."""
    dry_run = options.get("dry_run", False)
    return write_checkpoint(
        out, [source.node(name) for name in source.names()], title=title,
        inputs=source.inputs, side_files=() if dry_run else source.side_files(),
        notes=[*source.notes, *notes], **options)


def check_output(out: str | Path, inputs: list[Path], overwrite: bool, fmt: str,
                 needed_bytes: int = 0, max_shard_size: int | str = 0) -> None:
    """Refuse a wrong --out, --format or --max-shard-size before work that takes long (hashing
    a raw Meta folder's shards, downloading); the writer checks again, with every input."""
    OutputFolder(out, inputs=inputs, overwrite=overwrite, needed_bytes=needed_bytes)
    check_format(fmt)
    parse_size(max_shard_size)
