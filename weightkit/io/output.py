"""Output folders that appear only when complete.

Everything is written into a hidden sibling folder (`.NAME.weightkit-partial`) and renamed into
place at the end, so an interrupted run never leaves an output that looks finished. A run that
was killed or interrupted leaves that folder behind with its journal, and the same command
resumes from it; a run that failed for any other reason removes it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from weightkit.errors import OutputError
from weightkit.io.disk import free_bytes, writable_folder
from weightkit.io.reader import INDEX_NAMES, WEIGHT_SUFFIXES
from weightkit.manifest import MANIFEST_NAME, TARGET_MANIFEST_NAME

PARTIAL_SUFFIX = ".weightkit-partial"
# files that describe the weights rather than the model; never copied between checkpoints
_NOT_COPIED = {"README.md", ".gitattributes", MANIFEST_NAME, TARGET_MANIFEST_NAME, *INDEX_NAMES}


class OutputFolder:
    """`with OutputFolder(out, inputs=[...]) as tmp:` write into tmp; renamed to out on success."""

    def __init__(
        self,
        out: str | Path,
        inputs: Sequence[Path] = (),
        overwrite: bool = False,
        needed_bytes: int = 0,
    ) -> None:
        self.out = Path(out).absolute()
        self.tmp = self.out.parent / f".{self.out.name}{PARTIAL_SUFFIX}"
        self.overwrite = overwrite
        _check_target(self.out, [Path(p) for p in inputs], overwrite)
        _check_space(self.out, needed_bytes)

    def __enter__(self) -> Path:
        """The hidden folder to write into; a killed run's folder is kept for its journal."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        return self.tmp

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is KeyboardInterrupt:
            return  # kept: rerunning the same command resumes from its journal
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        _fsync_dir(self.tmp)
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.weightkit-old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(self.out, old)
            os.rename(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, self.out)
        _fsync_dir(self.out.parent)


def copy_side_files(sources: list[Path], dest: Path) -> list[str]:
    """Copy config and tokenizer files into dest; the first source that has a file wins."""
    copied = []
    for src in sources:
        if not src.is_dir():
            continue
        for f in sorted(src.iterdir()):
            if (
                not f.is_file()
                or f.name.startswith(".")
                or f.name in _NOT_COPIED
                or f.suffix in WEIGHT_SUFFIXES
                or (dest / f.name).exists()
            ):
                continue
            shutil.copyfile(f, dest / f.name)
            copied.append(f.name)
    return sorted(copied)


def _check_target(out: Path, inputs: list[Path], overwrite: bool) -> None:
    for p in inputs:
        src = p.absolute()
        if out == src or src in out.parents or out in src.parents:
            raise OutputError(
                f"output {out} overlaps the input {src}",
                "Write the output to a folder of its own, outside every input.",
            )
    if out.exists() and not overwrite:
        raise OutputError(f"output {out} already exists", "Pass `overwrite` to replace it.")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder")


def _check_space(out: Path, needed: int) -> None:
    probe = writable_folder(out.parent, out)  # the hidden folder is made next to `out`
    free = free_bytes(probe)
    if needed > free:
        raise OutputError(
            f"not enough disk space in {probe}: the output needs {needed / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB are free",
            "Free some space or choose another `out`.",
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
