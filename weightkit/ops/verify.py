"""`weightkit verify` and `weightkit checksum`: check files against published md5/sha256 sums (or
a weightkit output tensor by tensor against its manifest), and write sums for a folder.

`verify org/name` audits a repo's snapshot in the Hugging Face cache instead: each blob is hashed
against the name the cache gave it (the sha256 of an LFS file, the git blob sha1 of a small one),
since huggingface_hub itself trusts whatever bytes lie there; `fix` removes the damaged blobs and
their links, so that the next run that reads the repo downloads them again.

Checking files needs no torch, so this module imports it only for the tensor-manifest check and a
download check starts at once. Files are hashed in a thread pool: reads and hashlib both release
the GIL on large blocks, so N threads hash N files at N cores' speed.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from weightkit.catalog import known_manifests
from weightkit.errors import InputError, OptionConflict, OutputError
from weightkit.manifest import MANIFEST_NAME, ManifestEntry
from weightkit.options import show_progress
from weightkit.progress import ByteProgress, human_bytes, human_time

if TYPE_CHECKING:
    from weightkit.hub.cache import CachedFile, Snapshot

OK, MISMATCH, MISSING, EXTRA = "ok", "MISMATCH", "missing", "extra"
ALGOS = {"md5": 32, "sha256": 64}  # algorithm -> hex digits of its hash
GIT_SHA1 = "git-sha1"  # not a checksum-file algorithm: the cache's name for small files
CACHE = "cache"  # the report's kind for a Hub repo's snapshot in the Hugging Face cache
CHECKLIST_NAME = "checklist.chk"  # Meta's md5 list next to consolidated.*.pth
# looked for inside PATH, in this order, when neither `manifest` nor `known` is given
AUTO_SOURCES = (MANIFEST_NAME, CHECKLIST_NAME, "checksums.md5", "checksums.sha256")

_BLOCK = 8 * 1024 * 1024  # large reads: few syscalls, and hashlib drops the GIL per block
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
    spec = str(path)
    path = Path(path)
    if not path.exists() and _is_hub_spec(spec):
        return _check_hub(spec, manifest, known, algo, jobs, progress, fix)
    if fix:
        raise InputError(
            f"{path}: `fix` repairs a Hub repo's files in the Hugging Face cache; this is a folder",
            "Drop `fix`, and download the files named again.",
        )
    folder, only = _scope(path)
    source = _source(folder, manifest, known)
    if _is_tensor_manifest(source):
        if algo not in (None, "sha256"):
            raise InputError(
                f"{source}: a tensor manifest holds sha256 hashes, not {algo}", "Drop `algo`."
            )
        return _check_tensors(path, source, jobs, progress)
    return _check_files(folder, only, source, algo, jobs, progress)


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
    folder, only = _scope(Path(path))
    out = Path(out) if out is not None else folder / f"{only or 'checksums'}.{algo}"
    names = [only] if only else _files_in(folder, skip={out.resolve()})
    if not names:
        raise InputError(f"{folder}: no files to list", "Point at the folder to publish.")
    start = time.perf_counter()
    digests = _hash_files(folder, names, algo, jobs, progress, title="checksum")
    text = "".join(_checksum_line(digests[n], n) for n in names)
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


def new_hash(algo: str, size: int) -> Any:
    """A hash object for `algo` over content of `size` bytes: md5, sha256, or git-sha1 (git's
    blob id, which the Hub and its cache name small files by: sha1 of `blob SIZE\\0`, then the
    content)."""
    if algo != GIT_SHA1:
        return hashlib.new(algo)
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\0" % size)
    return h


def hash_file(
    path: Path,
    algo: str,
    on_block: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> str:
    """Hex digest of a file, read in large blocks; `on_block(nbytes)` after each block."""
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as f:
            h = new_hash(algo, os.fstat(f.fileno()).st_size)
            while n := f.readinto(buf):
                h.update(view[:n])
                if on_block is not None:
                    on_block(n)
                if stop is not None and stop.is_set():
                    break  # the run was abandoned; this digest is thrown away
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror})") from None
    return h.hexdigest()


# --- where the checksums come from ----------------------------------------------------------


def _scope(path: Path) -> tuple[Path, str | None]:
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


def _checksum_line(digest: str, name: str) -> str:
    if any(c in name for c in "\\\n\r"):  # md5sum's escaping, so names survive one per line
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{digest}  {escaped}\n"
    return f"{digest}  {name}\n"


def _files_in(folder: Path, skip: set[Path]) -> list[str]:
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
    digests = _hash_files(folder, present, sums.algo, jobs, progress, title="verify")
    seconds = time.perf_counter() - start
    rows = [_file_row(n, want, digests.get(n)) for n, want in listed.items()]
    if only is None:
        extras = set(_files_in(folder, skip={source.resolve()})) - set(listed)
        rows += [Row(n, None, None, EXTRA) for n in sorted(extras)]
    nbytes = sum((folder / n).stat().st_size for n in present)
    return VerifyReport(
        folder / only if only else folder, source, "files", sums.algo, rows, nbytes, seconds
    )


def _file_row(name: str, want: str, got: str | None) -> Row:
    if got is None:
        return Row(name, want, None, MISSING)
    return Row(name, want, got, OK if got == want else MISMATCH)


def _hash_files(
    folder: Path, names: list[str], algo: str, jobs: int | None, progress: bool | None, title: str
) -> dict[str, str]:
    return _hash_paths({n: (folder / n, algo) for n in names}, jobs, progress, title)


def _hash_paths(
    todo: dict[str, tuple[Path, str]], jobs: int | None, progress: bool | None, title: str
) -> dict[str, str]:
    """{key: hex digest} of each (file, algorithm) in `todo`, hashed in parallel."""
    sizes = {k: path.stat().st_size for k, (path, _) in todo.items()}
    # largest first, so the workers run out of files at about the same time
    order = sorted(todo, key=lambda k: sizes[k], reverse=True)
    with ByteProgress(
        title, sum(sizes.values()), len(todo), show_progress(progress), unit="files"
    ) as bar:

        def one(key: str, stop: threading.Event) -> str:
            path, algo = todo[key]
            digest = hash_file(path, algo, lambda n: bar.advance(n, 0), stop)
            bar.advance(0, 1)
            return digest

        return _parallel(one, order, jobs)


# --- checking a snapshot in the Hugging Face cache --------------------------------------------


def _is_hub_spec(spec: str) -> bool:
    from weightkit.hub.cache import is_hub_spec  # huggingface_hub: loaded only for a Hub id

    return is_hub_spec(spec)


def _check_hub(
    spec: str,
    manifest: str | Path | None,
    known: str | None,
    algo: str | None,
    jobs: int | None,
    progress: bool | None,
    fix: bool,
) -> VerifyReport:
    from weightkit.hub.cache import cached_snapshot

    snapshot = cached_snapshot(spec)
    if manifest is not None or known is not None:
        if fix:
            raise InputError(
                "`fix` removes what does not match the cache's own hashes; "
                "it does not go with `manifest` or `known`",
                "Drop one of them.",
            )
        return verify(
            snapshot.folder, manifest=manifest, known=known, algo=algo, jobs=jobs, progress=progress
        )
    if algo is not None:
        raise InputError(
            f"the Hugging Face cache names each file of {spec} by its sha256 or git "
            f"sha1; `algo` {algo} has nothing to check",
            "Drop `algo`.",
        )
    return _check_cache(snapshot, jobs, progress, fix)


def _check_cache(
    snapshot: Snapshot, jobs: int | None, progress: bool | None, fix: bool
) -> VerifyReport:
    files = snapshot.files()
    blobs = {
        f.blob.name: (f.blob, f.algo)
        for f in files
        if f.blob is not None and f.algo is not None and f.blob.is_file()
    }
    start = time.perf_counter()
    digests = _hash_paths(blobs, jobs, progress, title="verify")
    seconds = time.perf_counter() - start
    sizes = snapshot.listed_sizes()
    rows = [_cache_row(f, digests.get(f.blob_name or ""), sizes.get(f.path)) for f in files]
    nbytes = sum(path.stat().st_size for path, _ in blobs.values())
    removed = []
    if fix:
        damaged = {r.expected for r in rows if r.verdict in (MISMATCH, MISSING) and r.expected}
        removed = [
            p.relative_to(snapshot.store.path).as_posix()
            for name in sorted(damaged)
            for p in snapshot.store.remove_blob(name)
        ]
    return VerifyReport(
        snapshot.folder,
        snapshot.store.path / "blobs",
        CACHE,
        f"sha256/{GIT_SHA1}",
        rows,
        nbytes,
        seconds,
        sorted(removed),
    )


def _cache_row(f: CachedFile, got: str | None, listed_size: int | None) -> Row:
    """One file of a cached snapshot: its blob's bytes against the blob's name."""
    if f.blob is None:
        return Row(f.path, None, None, EXTRA, f.note)
    if f.algo is None:
        return Row(
            f.path,
            f.blob_name,
            None,
            EXTRA,
            "its blob's name is no sha256 or git sha1: not checked",
        )
    if got is None:
        return Row(
            f.path, f.blob_name, None, MISSING, f"a dangling link: blobs/{f.blob_name} is gone"
        )
    if got == f.blob_name:
        return Row(f.path, f.blob_name, got, OK)
    size = f.blob.stat().st_size
    if listed_size is not None and size < listed_size:
        note = f"truncated: {size} of {listed_size} bytes"
    elif listed_size is not None and size != listed_size:
        note = f"{size} bytes, the Hub listed {listed_size}"
    else:
        note = f"{size} bytes, not the ones its name is the hash of"
    return Row(f.path, f.blob_name, got, MISMATCH, note)


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

        actual = _parallel(one, present, jobs)
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


# --- running in parallel ---------------------------------------------------------------------


def _parallel(
    fn: Callable[[str, threading.Event], Any], items: list[str], jobs: int | None
) -> dict[str, Any]:
    """{item: fn(item, stop)} computed by `jobs` threads (default: one per core). On an error or
    Ctrl-C, `stop` is set so running calls can give up, and the rest never start."""
    jobs = jobs if jobs is not None else _cores()
    if jobs < 1:
        raise InputError(f"`jobs` must be at least 1, not {jobs}")
    stop = threading.Event()
    results = {}
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="weightkit-hash")
    try:
        futures = {pool.submit(fn, item, stop): item for item in items}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
