"""Checksum files (md5sum/sha256sum lines, as publishers ship them) and checking a folder against
one, or a weightkit output tensor by tensor against its manifest: the check `weightkit verify`
runs on a folder, and `download` and `convert_llama` run on what they fetched or read.

Checking files needs no torch, so this module imports it only for the tensor-manifest check and a
download check starts at once.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from weightkit.catalog import known_manifests
from weightkit.errors import InputError, OptionConflict
from weightkit.io.hashing import ALGOS, hash_files, parallel
from weightkit.manifest import MANIFEST_NAME, ManifestEntry
from weightkit.options import show_progress
from weightkit.progress import ByteProgress, human_bytes, human_time

OK, MISMATCH, MISSING, EXTRA = "ok", "MISMATCH", "missing", "extra"
CACHE = "cache"  # the report's kind for a Hub repo's snapshot in the Hugging Face cache
CHECKLIST_NAME = "checklist.chk"  # Meta's md5 list next to consolidated.*.pth
# looked for inside PATH, in this order, when neither `manifest` nor `known` is given
AUTO_SOURCES = (MANIFEST_NAME, CHECKLIST_NAME, "checksums.md5", "checksums.sha256")

_LINE = re.compile(r"([0-9a-fA-F]+) [ *]?(.+)")  # md5sum: HASH, space, space or '*', NAME
_UNESCAPE = {"\\\\": "\\", "\\n": "\n", "\\r": "\r"}


@dataclass(frozen=True)
class Row:
    name: str  # file path relative to the checked folder, or tensor name
    expected: str | None
    actual: str | None
    verdict: str  # ok / MISMATCH / missing / extra
    note: str = ""  # what the hashes alone do not say (a dtype or shape that differs)


@dataclass
class VerifyReport:
    path: Path
    source: Path  # the checksum file or tensor manifest checked against
    kind: str  # "files", "tensors", or "cache" (a snapshot in the Hugging Face cache)
    algo: str
    rows: list[Row]
    bytes_hashed: int = 0
    seconds: float = 0.0
    removed: list[str] = field(default_factory=list)  # cache `fix`: paths in the repo's folder

    @property
    def ok(self) -> bool:
        """True when everything listed is present and matches; extras do not count."""
        return all(r.verdict in (OK, EXTRA) for r in self.rows)

    def counts(self) -> dict[str, int]:
        return {v: sum(r.verdict == v for r in self.rows) for v in (OK, MISMATCH, MISSING, EXTRA)}

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "path": str(self.path),
            "source": str(self.source),
            "kind": self.kind,
            "algo": self.algo,
            "ok": self.ok,
            "counts": self.counts(),
            "bytes_hashed": self.bytes_hashed,
            "seconds": round(self.seconds, 3),
            "rows": [asdict(r) for r in self.rows],
        }
        return {**doc, "removed": self.removed} if self.kind == CACHE else doc

    def summary(self) -> str:
        c = self.counts()
        rate = self.bytes_hashed / self.seconds if self.seconds > 0 else 0.0
        what = (
            f"the blobs of {self.path} checked against their names in {self.source}"
            if self.kind == CACHE
            else f"{self.kind} of {self.path} checked against {self.source}"
        )
        text = (
            f"{c[OK]} ok, {c[MISMATCH]} MISMATCH, {c[MISSING]} missing, {c[EXTRA]} extra: "
            f"{what} ({self.algo}), {human_bytes(self.bytes_hashed)} in "
            f"{human_time(self.seconds)} ({human_bytes(rate)}/s)."
        )
        if self.ok:
            return f"{text} Everything listed matches."
        if self.kind == "files":
            return f"{text} FAILED: download the MISMATCH and missing files again."
        if self.kind == CACHE and self.removed:
            return (
                f"{text} FAILED: removed {', '.join(self.removed)}; the next run that reads "
                "the repo downloads them again."
            )
        if self.kind == CACHE:
            return (
                f"{text} FAILED: the files marked MISMATCH or missing are damaged in the "
                "cache; run the same command with `fix` to remove them, and the next run "
                "that reads the repo downloads them again."
            )
        return f"{text} FAILED: the tensors marked MISMATCH or missing are not the ones expected."


@dataclass(frozen=True)
class Checksums:
    """An md5sum/sha256sum file: relative path -> hex digest, in the file's order."""

    algo: str
    entries: dict[str, str]


@dataclass(frozen=True)
class CheckOptions:
    """What a folder is checked against and how: `manifest` (an md5sum/sha256sum file, or a
    weightkit tensor manifest), else the shipped manifest called `known`, else the first of
    AUTO_SOURCES found in the folder; `algo` (default: told from the hash length); `jobs` files
    hashed at once (default: one per core); `progress` a bar on stderr (None: on a terminal)."""

    manifest: str | Path | None = None
    known: str | None = None
    algo: str | None = None
    jobs: int | None = None
    progress: bool | None = None


def verify_folder(path: str | Path, options: CheckOptions) -> VerifyReport:
    """Check PATH (a folder, or one file in it) as `options` say; never raises on a mismatch,
    prints nothing."""
    manifest, known, algo = options.manifest, options.known, options.algo
    jobs, progress = options.jobs, options.progress
    path = Path(path)
    folder, only = scope(path)
    source = _source(folder, manifest, known)
    if _is_tensor_manifest(source):
        if algo not in (None, "sha256"):
            raise InputError(
                f"{source}: a tensor manifest holds sha256 hashes, not {algo}", "Drop `algo`."
            )
        return _check_tensors(path, source, jobs, progress)
    return _check_files(folder, only, source, algo, jobs, progress)


def read_checksums(path: str | Path, algo: str | None = None) -> Checksums:
    """Parse an md5sum/sha256sum file (`HASH  NAME` or `HASH *NAME` lines, as published).

    The algorithm comes from the hash length unless `algo` is given; names that would leave the
    folder being checked (`../`, absolute paths) are refused.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no such checksum file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read it as a checksum file ({e})") from None
    entries: dict[str, str] = {}
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, digest = _parse_line(line, f"{path}:{lineno}")
        if name in entries:
            raise InputError(f"{path}:{lineno}: {name} is listed twice", "Keep one line per file.")
        entries[name] = digest
    if not entries:
        raise InputError(
            f"{path}: no checksum lines in it", "Expected md5sum/sha256sum lines: HASH  NAME."
        )
    return Checksums(_algo_of(entries.values(), algo, path), entries)


# --- where the checksums come from ----------------------------------------------------------


def scope(path: Path) -> tuple[Path, str | None]:
    """The folder that names are relative to, and the one file to look at when PATH is a file."""
    if path.is_dir():
        return path, None
    if path.is_file():
        return path.parent, path.name
    raise InputError(f"{path}: no such file or folder")


def _source(folder: Path, manifest: str | Path | None, known: str | None) -> Path:
    if manifest is not None and known is not None:
        raise OptionConflict("give `manifest` or `known`, not both")
    if manifest is not None:
        if not Path(manifest).is_file():
            raise InputError(f"{manifest}: no such checksum file")
        return Path(manifest)
    if known is not None:
        return _known(known)
    for name in AUTO_SOURCES:
        if (folder / name).is_file():
            return folder / name
    raise InputError(
        f"{folder}: nothing to check it against (no {', '.join(AUTO_SOURCES)} in it)",
        "Give `manifest` FILE (md5sum/sha256sum format) or `known` NAME "
        f"(known: {', '.join(known_manifests())}).",
    )


def _known(name: str) -> Path:
    manifests = known_manifests()
    if name not in manifests:
        raise InputError(f"no known manifest called {name!r}", f"Known: {', '.join(manifests)}.")
    return manifests[name]


def _is_tensor_manifest(path: Path) -> bool:
    # a weightkit manifest is JSON; md5sum lines never start with '{'
    with open(path, "rb") as f:
        return f.read(64).lstrip().startswith(b"{")


def _parse_line(line: str, where: str) -> tuple[str, str]:
    escaped = line.startswith("\\")  # md5sum marks names holding '\' or newlines this way
    m = _LINE.fullmatch(line[1:] if escaped else line)
    if not m:
        raise InputError(
            f"{where}: not an md5sum/sha256sum line: {line!r}",
            "Each line should be HASH  NAME (or HASH *NAME).",
        )
    name = m.group(2)
    if escaped:
        name = re.sub(r"\\[\\nr]", lambda e: _UNESCAPE[e.group()], name)
    return _inside_name(name, where), m.group(1).lower()


def _inside_name(name: str, where: str) -> str:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or p.as_posix() == ".":
        raise InputError(
            f"{where}: {name!r} is not a path inside the folder being checked",
            "A checksum file may only name files inside that folder (no ../, no absolute "
            "paths); make sure it is the publisher's file.",
        )
    return p.as_posix()


def _algo_of(digests: Iterable[str], algo: str | None, where: Path) -> str:
    lengths = {len(d) for d in digests}
    if algo is not None:
        if algo not in ALGOS:
            raise InputError(f"unknown hash algorithm {algo!r}", f"Use one of: {', '.join(ALGOS)}.")
        if lengths != {ALGOS[algo]}:
            raise InputError(
                f"{where}: holds hashes of {'/'.join(map(str, sorted(lengths)))} hex digits, "
                f"{algo} hashes have {ALGOS[algo]}",
                "Drop `algo` to tell the algorithm from the hash length.",
            )
        return algo
    by_length = {n: a for a, n in ALGOS.items()}
    if len(lengths) == 1 and next(iter(lengths)) in by_length:
        return by_length[lengths.pop()]
    raise InputError(
        f"{where}: cannot tell the algorithm from hashes of "
        f"{'/'.join(map(str, sorted(lengths)))} hex digits (md5 has 32, sha256 64)",
        "Give `algo`, and check that the file is an md5sum/sha256sum list.",
    )


def checksum_line(digest: str, name: str) -> str:
    if any(c in name for c in "\\\n\r"):  # md5sum's escaping, so names survive one per line
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{digest}  {escaped}\n"
    return f"{digest}  {name}\n"


def files_in(folder: Path, skip: set[Path]) -> list[str]:
    """Files under `folder` as sorted relative POSIX paths. Hidden ones (.git, .cache,
    .gitattributes, partial outputs) and `skip` (resolved paths) are left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            p = Path(root, f)
            if not f.startswith(".") and p.resolve() not in skip:
                found.append(p.relative_to(folder).as_posix())
    return sorted(found)


# --- checking files --------------------------------------------------------------------------


def _check_files(
    folder: Path,
    only: str | None,
    source: Path,
    algo: str | None,
    jobs: int | None,
    progress: bool | None,
) -> VerifyReport:
    sums = read_checksums(source, algo)
    listed = sums.entries
    if only is not None:
        if only not in listed:
            raise InputError(
                f"{folder / only}: not listed in {source}",
                "Check the whole folder, or give the checksum file that lists it.",
            )
        listed = {only: listed[only]}
    present = [n for n in listed if (folder / n).is_file()]
    start = time.perf_counter()
    digests = hash_files(folder, present, sums.algo, jobs, progress, title="verify")
    seconds = time.perf_counter() - start
    rows = [_file_row(n, want, digests.get(n)) for n, want in listed.items()]
    if only is None:
        extras = set(files_in(folder, skip={source.resolve()})) - set(listed)
        rows += [Row(n, None, None, EXTRA) for n in sorted(extras)]
    nbytes = sum((folder / n).stat().st_size for n in present)
    return VerifyReport(
        folder / only if only else folder, source, "files", sums.algo, rows, nbytes, seconds
    )


def _file_row(name: str, want: str, got: str | None) -> Row:
    if got is None:
        return Row(name, want, None, MISSING)
    return Row(name, want, got, OK if got == want else MISMATCH)


# --- checking tensors ------------------------------------------------------------------------


def _check_tensors(
    path: Path, source: Path, jobs: int | None, progress: bool | None
) -> VerifyReport:
    from weightkit.io.reader import open_checkpoint  # torch: loaded only for this check
    from weightkit.manifest import Manifest

    expected = Manifest.load(source)
    ckpt = open_checkpoint(path)
    # one file of a sharded checkpoint: only its tensors are looked at
    listed = [n for n in expected.entries if path.is_dir() or n in ckpt]
    present = [n for n in listed if n in ckpt]
    nbytes = sum(ckpt.info(n).nbytes for n in present)
    start = time.perf_counter()
    with ByteProgress(
        "verify", nbytes, len(present), show_progress(progress), unit="tensors"
    ) as bar:

        def one(name: str, stop: threading.Event) -> ManifestEntry:
            entry = ckpt.manifest_entry(name)
            bar.advance(ckpt.info(name).nbytes, 1)
            return entry

        actual = parallel(one, present, jobs)
    seconds = time.perf_counter() - start
    rows = [_tensor_row(n, expected.entries[n], actual.get(n)) for n in listed]
    rows += [Row(n, None, None, EXTRA) for n in ckpt.names() if n not in expected]
    return VerifyReport(path, source, "tensors", "sha256", rows, nbytes, seconds)


def _tensor_row(name: str, want: ManifestEntry, got: ManifestEntry | None) -> Row:
    if got is None:
        return Row(name, want.sha256, None, MISSING)
    if (got.dtype, got.shape) != (want.dtype, want.shape):
        return Row(
            name,
            want.sha256,
            got.sha256,
            MISMATCH,
            f"{got.dtype} {list(got.shape)}, expected {want.dtype} {list(want.shape)}",
        )
    if got.sha256 == want.sha256:
        return Row(name, want.sha256, got.sha256, OK)
    if got.sha256 == want.recovers_to:
        return Row(name, want.sha256, got.sha256, OK, "within one rounding, as the diff predicted")
    return Row(name, want.sha256, got.sha256, MISMATCH)
