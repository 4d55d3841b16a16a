"""The disk an output goes to: whether a folder can be made there, and its free space.

No torch here: `download` checks its `out` with these too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from weightkit.errors import OutputError


def nearest_existing(path: Path) -> Path:
    """`path` itself, or its nearest parent that exists."""
    while not path.exists():
        path = path.parent
    return path


def free_bytes(folder: Path) -> int:
    """Free space on the disk that holds `folder` (or its nearest existing parent)."""
    return shutil.disk_usage(nearest_existing(folder)).free


def writable_folder(folder: Path, out: Path | None = None) -> Path:
    """The nearest existing folder at or above `folder`, once it is sure that files can be made
    there: a file on the way, or no permission, is an OutputError naming `out` (the output that
    goes there; default `folder`)."""
    out = folder if out is None else out
    probe = nearest_existing(folder)
    if not probe.is_dir():
        raise OutputError(
            f"cannot make the folder {out}: {probe} is a file",
            "Choose an `out` that is a folder or can become one.",
        )
    if not os.access(probe, os.W_OK):
        raise OutputError(
            f"cannot write to {probe}: permission denied",
            "Choose an `out` in a folder you can write to.",
        )
    return probe
