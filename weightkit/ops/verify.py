"""`weightkit verify` and `weightkit checksum`: check files against published md5/sha256 sums (or
a weightkit output tensor by tensor against its manifest), and write sums for a folder.

A folder is checked by weightkit/checksums.py. `verify org/name` audits a repo's snapshot in the
Hugging Face cache instead (weightkit/hub/cache.py): each blob is hashed against the name the
cache gave it (the sha256 of an LFS file, the git blob sha1 of a small one), since huggingface_hub
itself trusts whatever bytes lie there; `fix` removes the damaged blobs and their links, so that
the next run that reads the repo downloads them again.

Checking files needs neither torch nor huggingface_hub: the Hub side is imported only for a PATH
that does not exist, and the tensor-manifest check imports torch only when it runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightkit.checksums import (
    CheckOptions,
    VerifyReport,
    checksum_line,
    files_in,
    scope,
    verify_folder,
)
from weightkit.errors import InputError, OutputError
from weightkit.io.hashing import ALGOS, hash_files


def verify(
    path: str | Path,
    *,
    manifest: str | Path | None = None,
    known: str | None = None,
    algo: str | None = None,
    jobs: int | None = None,
    fix: bool = False,
    progress: bool | None = None,
) -> VerifyReport:
    """Check PATH (a folder, or one file in it) against checksums; never raises on a mismatch.

    The source is `manifest` (an md5sum/sha256sum file, or a weightkit tensor manifest), else the
    shipped manifest called `known`, else the first of AUTO_SOURCES found in the folder.

    A PATH that does not exist but is a Hub repo id (`org/name[@revision]`) or a catalog release
    is looked up in the Hugging Face cache, never downloaded: with `manifest` or `known` its
    snapshot is checked as a folder; without, each blob against its name (`fix`: the damaged
    ones and their links are removed). `progress`: a progress bar on stderr (None: on a
    terminal only); nothing else is printed.
    """
    options = CheckOptions(manifest, known, algo, jobs, progress)
    spec = str(path)
    path = Path(path)
    if not path.exists():
        # huggingface_hub is loaded only here: a folder's check starts at once
        from weightkit.hub.audit import verify_cached
        from weightkit.hub.cache import is_hub_spec

        if is_hub_spec(spec):
            return verify_cached(spec, options, fix)
    if fix:
        raise InputError(
            f"{path}: `fix` repairs a Hub repo's files in the Hugging Face cache; this is a folder",
            "Drop `fix`, and download the files named again.",
        )
    return verify_folder(path, options)


@dataclass
class ChecksumResult:
    """What `write_checksums` wrote: the list's path, its algorithm and the files it names."""

    path: Path
    algo: str
    files: list[str]
    bytes_hashed: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "algo": self.algo,
            "files": self.files,
            "bytes_hashed": self.bytes_hashed,
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        return f"checksum: wrote {len(self.files)} {self.algo} line(s) to {self.path}."


def write_checksums(
    path: str | Path,
    *,
    algo: str = "md5",
    out: str | Path | None = None,
    jobs: int | None = None,
    progress: bool | None = None,
) -> ChecksumResult:
    """Write an md5sum-format list of every file in PATH (hidden ones aside), sorted by path.

    Default `out`: `checksums.<algo>` inside the folder (or `<file>.<algo>` for one file), which
    `verify` finds by itself. `progress` as for `verify`.
    """
    if algo not in ALGOS:
        raise InputError(f"unknown hash algorithm {algo!r}", f"Use one of: {', '.join(ALGOS)}.")
    folder, only = scope(Path(path))
    out = Path(out) if out is not None else folder / f"{only or 'checksums'}.{algo}"
    names = [only] if only else files_in(folder, skip={out.resolve()})
    if not names:
        raise InputError(f"{folder}: no files to list", "Point at the folder to publish.")
    start = time.perf_counter()
    digests = hash_files(folder, names, algo, jobs, progress, title="checksum")
    text = "".join(checksum_line(digests[n], n) for n in names)
    try:
        out.write_text(text, encoding="utf-8", newline="\n")
    except OSError as e:
        raise OutputError(f"{out}: cannot write the checksum file ({e.strerror})") from None
    return ChecksumResult(
        out,
        algo,
        names,
        sum((folder / n).stat().st_size for n in names),
        time.perf_counter() - start,
    )
