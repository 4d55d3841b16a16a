"""`weightkit download`: fetch a Hub repo, or a release from the checksums catalog, into a folder.

Each file grows in DIR/.weightkit-partial/<file>.part and every new request asks only for the
bytes that are not there yet (HTTP Range), so a dropped connection, a crash or a killed process
costs nothing already on disk. A file is moved into place only when its size and hash are the
ones the Hub lists (the LFS sha256, or the git blob sha1 of a small file).

Where a file grows and where it ends up is a `Layout`: a folder here (`FolderLayout`), the
Hugging Face cache in weightkit/hub/cache.py; `fetch_files` is the same for both.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Protocol

import httpx2
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_url
from huggingface_hub.utils import filter_repo_objects, get_session, hf_raise_for_status

from weightkit.catalog import find_release, load_catalog
from weightkit.checksums import EXTRA, MISSING, OK, CheckOptions, VerifyReport, verify_folder
from weightkit.errors import ChecksumError, InputError, OptionConflict, OutputError
from weightkit.hub.client import (
    PARTIAL_DIR,
    Hub,
    HubError,
    RemoteFile,
    connect,
    hub_errors,
    list_files,
    update_from_file,
)
from weightkit.io.disk import free_bytes, writable_folder
from weightkit.options import HubOptions
from weightkit.progress import ByteProgress, human_bytes, human_time

ADAPTER_PATTERNS = ("adapter_config.json", "adapter_model.*")
RETRIES = 5  # failed attempts in a row, without a byte of progress, before a file is given up
RETRY_WAIT = 1.0  # seconds before the first retry, doubled after each further failure
_MAX_WAIT = 30.0
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
_DAMAGED_HINT = (
    "Run the same command to fetch it again. If it fails again, the file on the "
    "server is damaged: tell the repo's owners."
)


@dataclass
class DownloadResult:
    """What `download` did (or, in a dry run, would do): the files, the bytes and the checks."""

    repo: str
    revision: str  # as asked (default: main)
    commit: str  # what it pointed to
    out: Path
    files: list[str] = field(default_factory=list)  # the selection, all of it
    downloaded: list[str] = field(default_factory=list)  # fetched (or finished) by this run
    present: list[str] = field(default_factory=list)  # already in place with the right hash
    nbytes: int = 0  # bytes received over the network by this run
    seconds: float = 0.0
    manifest: Path | None = None  # the catalog manifest the result was verified against
    verify_report: VerifyReport | None = None
    plan: DryRun | None = None  # a dry run's: what it would download
    notes: list[str] = field(default_factory=list)

    @property
    def dry_run(self) -> bool:
        return self.plan is not None

    def summary(self) -> str:
        if self.plan is not None:
            return self.plan.summary(self.repo, self.commit)
        text = fetched_text(
            self.repo,
            self.commit,
            len(self.downloaded),
            self.nbytes,
            self.seconds,
            len(self.present),
            str(self.out),
        )
        return text if self.verify_report is None else f"{text}\n{self.verify_report.summary()}"

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "repo": self.repo,
            "revision": self.revision,
            "commit": self.commit,
            "out": str(self.out),
            "dry_run": self.dry_run,
            "files": self.files,
        }
        if self.plan is not None:
            return {**doc, **self.plan.to_dict(), "notes": self.notes}
        report = self.verify_report
        return {
            **doc,
            "downloaded": self.downloaded,
            "present": self.present,
            "bytes": self.nbytes,
            "seconds": round(self.seconds, 3),
            "checked": {
                "manifest": str(self.manifest) if self.manifest else None,
                "verify": report.to_dict() if report is not None else None,
            },
            "notes": self.notes,
        }


@dataclass(frozen=True)
class DryRun:
    """What fetching would do: `todo` of `total` files, `needed` bytes into `root`, which has
    `free` bytes free."""

    todo: list[RemoteFile]
    total: int
    needed: int
    root: Path
    free: int

    def summary(self, repo: str, commit: str) -> str:
        return (
            f"{repo}@{commit[:8]} (dry run): {len(self.todo)} of {self.total} files to "
            f"fetch, {human_bytes(self.needed)} to download into {self.root} (disk free: "
            f"{human_bytes(self.free)}). Nothing was downloaded."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "to_download": [f.path for f in self.todo],
            "bytes_to_download": self.needed,
            "disk_free": self.free,
        }


def fetched_text(
    repo: str, commit: str, downloaded: int, nbytes: int, seconds: float, present: int, where: str
) -> str:
    """The line a finished fetch is summed up in."""
    return (
        f"{repo}@{commit[:8]}: {downloaded} files downloaded ({human_bytes(nbytes)} in "
        f"{human_time(seconds)}), {present} already there, into {where}"
    )


def download(
    repo_or_release: str,
    out: str | Path,
    *,
    only_lora: bool = False,
    only_base: bool = False,
    fp16: bool = False,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    revision: str | None = None,
    verify: bool = True,
    dry_run: bool = False,
    hub: HubOptions | None = None,
) -> DownloadResult:
    """Download a repo (`org/name`) or a catalog release (`zhixi-13b`) into `out`, resuming
    whatever an earlier run left, and check each file against the Hub's hashes; then, when the
    catalog has a manifest for what was fetched (and `verify`), check `out` against it.
    Prints nothing; returns a DownloadResult (with `dry_run`: what it would download).

    For a release, `only_lora` takes its "lora" part, `fp16` its "diff-fp16" part, otherwise its
    "diff" part. For a repo, `only_lora` keeps the adapter files and `only_base` the others.
    `hub`: the endpoint, token, files fetched at once and progress bars.
    """
    repo, adapter, manifest = _resolve(repo_or_release, only_lora, only_base, fp16)
    client = connect(hub)
    commit, listed = list_files(client, repo, revision)
    files = select(listed, adapter, include, exclude)
    if not files:
        raise InputError(
            f"no file of {repo} matches the selection",
            f"It has: {', '.join(f.path for f in listed) or 'no files'}.",
        )
    out = Path(out)
    refuse_escaping_names(files, out, repo)
    writable_folder(out)  # not a file, nor inside one: a dry run refuses it as the real run does
    layout = FolderLayout(out)
    result = DownloadResult(
        repo, revision or hf_constants.DEFAULT_REVISION, commit, out, files=[f.path for f in files]
    )
    if dry_run:
        result.plan = plan_fetch(
            [f for f in files if not _maybe_done(layout, f)], len(files), layout
        )
        return result
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    try:
        fetch_files(client, repo, commit, files, layout, result)
    finally:
        _remove_empty_dirs(out / PARTIAL_DIR)  # what is left there is what a rerun resumes
    result.seconds = time.perf_counter() - start

    if verify and manifest is not None:
        deselected = {f.path for f in listed} - {f.path for f in files}
        result.manifest = manifest
        result.verify_report = _verify(out, manifest, deselected, client.show_progress)
        if not result.verify_report.ok:
            raise ManifestMismatch(result)
    return result


# --- what to fetch ---------------------------------------------------------------------------


def _resolve(
    name: str, only_lora: bool, only_base: bool, fp16: bool
) -> tuple[str, str | None, Path | None]:
    """(repo, adapter filter "lora"/"base"/None, catalog manifest) for a repo id or release."""
    if only_lora and only_base:
        raise OptionConflict("`only_lora` and `only_base` exclude each other")
    if "/" in name:
        if fp16:
            raise OptionConflict(
                f"`fp16` picks the fp16 diff of a release; {name} is a repo",
                "Give a release name from the catalog, or the fp16 repo itself.",
            )
        adapter = "lora" if only_lora else "base" if only_base else None
        return name, adapter, manifest_of_repo(name)
    release = find_release(name)
    if release is None:
        known = ", ".join(sorted(load_catalog()))
        raise InputError(
            f"{name!r} is neither a Hub repo id (org/name) nor a release in the catalog",
            f"Known releases: {known}.",
        )
    if only_lora and fp16:
        raise OptionConflict(f"release {name} has no fp16 LoRA; use `only_lora` or `fp16`")
    part = release.hub_part("lora" if only_lora else "diff-fp16" if fp16 else "diff")
    return part.repo or "", None, part.manifest  # hub_part: it has a repo


def manifest_of_repo(repo: str) -> Path | None:
    """The catalog manifest of the release part published as `repo`, if there is one."""
    try:
        parts = [p for r in load_catalog().values() for p in r.parts.values()]
    except InputError:  # no catalog at all: a plain repo download does not need one
        return None
    return next((p.manifest for p in parts if p.repo == repo), None)


def select(
    files: list[RemoteFile],
    adapter: str | None,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> list[RemoteFile]:
    """The files kept by the adapter filter ("lora": only adapter files, "base": all others,
    None: all) and the include/exclude globs."""
    include, exclude = list(include), list(exclude)
    if adapter is not None:
        lora = {
            f.path
            for f in filter_repo_objects(
                files, allow_patterns=list(ADAPTER_PATTERNS), key=_basename
            )
        }
        files = [f for f in files if (f.path in lora) == (adapter == "lora")]
    return list(
        filter_repo_objects(
            files,
            allow_patterns=include or None,
            ignore_patterns=exclude or None,
            key=lambda f: f.path,
        )
    )


def _basename(f: RemoteFile) -> str:
    return PurePosixPath(f.path).name


def refuse_escaping_names(
    files: list[RemoteFile], out: Path, repo: str, within: Path | None = None
) -> None:
    """A repo is remote input: a name like ../x, /x or C:x must not write outside `out`, nor
    (followed through the links already there) outside `within` (default: `out`)."""
    root = (within or out).resolve()
    for f in files:
        if _unsafe_name(f.path, out, root):
            raise HubError(
                f"{repo} lists a file named {f.path!r}, which is not a plain path "
                f"inside {out}; nothing was downloaded",
                "The repo is malformed or hostile; tell its owners.",
            )


def _unsafe_name(name: str, out: Path, root: Path) -> bool:
    return (
        PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).anchor != ""
        or "\\" in name
        or any(p in ("", ".", "..") for p in name.split("/"))
        or name.split("/")[0] == PARTIAL_DIR  # our own scratch space
        or not (out / name).resolve().is_relative_to(root)
    )  # through a symlink in `out`


# --- where files go --------------------------------------------------------------------------


class Layout(Protocol):
    """Where a file grows while it is fetched, and where it lies once its hash is checked."""

    @property
    def root(self) -> Path:
        """The folder whose disk receives the files (checked for space, named in messages)."""

    @property
    def space_hint(self) -> str:
        """What to do when that disk is too small."""

    def target(self, f: RemoteFile) -> Path:
        """Where the finished file is read from."""

    def part(self, f: RemoteFile) -> Path:
        """Where it grows; the bytes there survive a failed or killed run."""

    def place(self, f: RemoteFile, part: Path) -> None:
        """Move the checked `part` into place."""


@dataclass(frozen=True)
class FolderLayout:
    """`download(repo, out)`: out/<file>, growing in out/.weightkit-partial/<file>.part."""

    root: Path
    space_hint: str = "Free some space or choose another `out`."

    def target(self, f: RemoteFile) -> Path:
        return self.root / f.path

    def part(self, f: RemoteFile) -> Path:
        return self.root / PARTIAL_DIR / f"{f.path}.part"

    def place(self, f: RemoteFile, part: Path) -> None:
        target = self.target(f)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)


# --- fetching --------------------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth retrying: the connection dropped, or the server asked to come back."""


class _Stopped(Exception):
    """Another file failed or the user interrupted: stop, keeping the bytes received."""


def fetch_files(
    hub: Hub,
    repo: str,
    commit: str,
    files: list[RemoteFile],
    layout: Layout,
    result: DownloadResult,
) -> None:
    """Bring `files` of `repo` at `commit` into `layout`, `hub.jobs` at a time, each checked
    against the Hub's size and hash; `result` collects what was fetched and what was there
    already."""
    remaining = sum(f.size - _part_size(layout, f) for f in files if not _maybe_done(layout, f))
    _check_space(layout, remaining)
    stop = threading.Event()
    lock = threading.Lock()
    headers = hub.headers()
    errors: list[BaseException] = []
    with ByteProgress(
        f"download {repo}", remaining, len(files), hub.show_progress, unit="files"
    ) as bar:

        def advance(nbytes: int, items: int = 0) -> None:
            with lock:  # called from several threads
                result.nbytes += nbytes
            bar.advance(nbytes, items)

        def one(f: RemoteFile) -> None:
            url = hf_hub_url(repo, f.path, revision=commit, endpoint=hub.endpoint)
            with hub_errors(hub, repo, commit, f.path):
                done = _fetch_one(f, layout, url, headers, repo, advance, stop)
            with lock:
                (result.downloaded if done else result.present).append(f.path)
            advance(0, 1)

        pool = ThreadPoolExecutor(max_workers=hub.jobs, thread_name_prefix="download")
        try:
            for fut in as_completed([pool.submit(one, f) for f in files]):
                e = fut.exception()
                if e is None or isinstance(e, _Stopped):
                    continue
                errors.append(e)
                if not isinstance(e, ChecksumError):
                    stop.set()  # the other files would fail the same way; they keep their bytes
        except BaseException:
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    result.downloaded.sort()
    result.present.sort()
    _raise_first(errors, repo)


def _raise_first(errors: list[BaseException], repo: str) -> None:
    """The first failure that is not a hash mismatch; else the mismatches, all named."""
    mismatches = [e for e in errors if isinstance(e, ChecksumError)]
    others = [e for e in errors if not isinstance(e, ChecksumError)]
    if others:
        raise others[0]
    if len(mismatches) == 1:
        raise mismatches[0]
    if mismatches:
        raise ChecksumError(
            f"{len(mismatches)} files of {repo} did not match the Hub's hashes "
            "and were deleted:\n" + "\n".join(e.message for e in mismatches),
            _DAMAGED_HINT,
        )


def _fetch_one(
    f: RemoteFile,
    layout: Layout,
    url: str,
    headers: dict[str, str],
    repo: str,
    advance: Callable[..., None],
    stop: threading.Event,
) -> bool:
    """Bring one file into place; False when it was already there."""
    if _maybe_done(layout, f) and f.matches(layout.target(f)):
        return False
    part = _Part(layout.part(f), f)
    try:
        _download_with_retries(part, url, headers, repo, advance, stop)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(
                f"the disk is full: {part.path} stopped at {part.size} bytes",
                f"Free some space on {layout.root}'s disk and run the same command "
                "again: it resumes from there.",
            ) from None
        raise
    finally:
        part.close()
    problem = f.check(part.size, part.hasher.hexdigest())
    if problem:
        part.path.unlink()
        raise ChecksumError(f"{repo}: {f.path} {problem}; the download was deleted", _DAMAGED_HINT)
    layout.place(f, part.path)
    return True


def _download_with_retries(
    part: _Part,
    url: str,
    headers: dict[str, str],
    repo: str,
    advance: Callable[..., None],
    stop: threading.Event,
) -> None:
    failures = 0
    while True:
        before = part.size
        try:
            _request_rest(part, url, headers, advance, stop)
            return
        except (httpx2.TransportError, _Transient) as e:
            failures = 1 if part.size > before else failures + 1
            if failures > RETRIES:
                raise HubError(
                    f"downloading {part.remote.path} from {repo} failed {failures} "
                    f"times in a row ({e})",
                    f"Run the same command again: it resumes from the {part.size} "
                    f"bytes kept in {part.path}.",
                ) from None
            if stop.wait(min(_MAX_WAIT, RETRY_WAIT * 2 ** (failures - 1))):
                raise _Stopped() from None


def _request_rest(
    part: _Part,
    url: str,
    headers: dict[str, str],
    advance: Callable[..., None],
    stop: threading.Event,
) -> None:
    """One GET for the bytes `part` lacks, appended as they arrive."""
    if part.size >= part.remote.size:
        return
    request_headers = {**headers, "Accept-Encoding": "identity"}  # byte ranges of the file itself
    if part.size:
        request_headers["Range"] = f"bytes={part.size}-"
    with get_session().stream(
        "GET", url, headers=request_headers, timeout=hf_constants.HF_HUB_DOWNLOAD_TIMEOUT
    ) as r:
        if r.status_code in _RETRY_STATUS:
            raise _Transient(f"HTTP {r.status_code}")
        if r.status_code == 416:  # the kept bytes do not fit the file any more: start over
            part.restart()
            raise _Transient("HTTP 416, range not satisfiable")
        if r.status_code >= 400:
            r.read()
            hf_raise_for_status(r)
        if r.status_code != 206:  # a whole file, whatever was asked for
            part.restart()
        elif not r.headers.get("Content-Range", "").startswith(f"bytes {part.size}-"):
            part.restart()  # some other range: cannot be appended; ask for the whole file
            raise _Transient(f"unexpected Content-Range {r.headers.get('Content-Range')!r}")
        for chunk in r.iter_bytes():  # as they arrive: a killed run keeps what it got
            if stop.is_set():
                raise _Stopped()
            part.write(chunk)
            advance(len(chunk))
    if part.size < part.remote.size:
        raise _Transient(f"connection closed at byte {part.size} of {part.remote.size}")


class _Part:
    """A file growing in the partial folder, hashed as it grows (bytes kept by an earlier run
    are hashed once when it is opened)."""

    def __init__(self, path: Path, remote: RemoteFile) -> None:
        self.path = path
        self.remote = remote
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > remote.size:
            path.unlink()
        self.hasher = remote.new_hasher()
        self.size = update_from_file(self.hasher, path) if path.exists() else 0
        self._file: Any = open(path, "ab")

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self.hasher.update(chunk)
        self.size += len(chunk)

    def restart(self) -> None:
        self._file.truncate(0)
        self.hasher = self.remote.new_hasher()
        self.size = 0

    def close(self) -> None:
        self._file.close()


def _maybe_done(layout: Layout, f: RemoteFile) -> bool:
    """Cheap test that the file may already be in place (its hash decides)."""
    target = layout.target(f)
    return target.is_file() and target.stat().st_size == f.size


def _part_size(layout: Layout, f: RemoteFile) -> int:
    part = layout.part(f)
    size = part.stat().st_size if part.is_file() else 0
    return size if size <= f.size else 0


def plan_fetch(todo: list[RemoteFile], total: int, layout: Layout) -> DryRun:
    """What fetching `todo` (of `total` files) would download into `layout`, refused up front
    when the disk is too small; nothing is written."""
    needed = sum(f.size - _part_size(layout, f) for f in todo)
    _check_space(layout, needed)
    return DryRun(todo, total, needed, layout.root, free_bytes(layout.root))


def _check_space(layout: Layout, needed: int) -> None:
    free = free_bytes(layout.root)  # a dry run's `out` may not exist yet
    if needed > free:
        raise OutputError(
            f"{layout.root} has {human_bytes(free)} free, the download needs "
            f"{human_bytes(needed)} more",
            layout.space_hint,
        )


def _remove_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for folder, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):
        if not os.listdir(folder):
            os.rmdir(folder)


# --- checking against the catalog -------------------------------------------------------------


def _verify(out: Path, manifest: Path, deselected: set[str], progress: bool) -> VerifyReport:
    """`verify` with the catalog manifest; files left out on purpose do not count."""
    report = verify_folder(out, CheckOptions(manifest=manifest, progress=progress))
    return replace(
        report, rows=[r for r in report.rows if not (r.verdict == MISSING and r.name in deselected)]
    )


class ManifestMismatch(ChecksumError):
    """The download does not match the catalog manifest; `result` holds what was fetched and the
    verify report, which a person reads before the error."""

    def __init__(self, result: DownloadResult) -> None:
        assert result.verify_report is not None and result.manifest is not None
        bad = ", ".join(
            f"{r.name} ({r.verdict})"
            for r in result.verify_report.rows
            if r.verdict not in (OK, EXTRA)
        )
        super().__init__(
            f"{result.out} does not match the catalog manifest {result.manifest.name}: {bad}",
            "Download the files named again, or tell the catalog's maintainers "
            f"(checking {result.out} against {result.manifest} lists every file).",
            result=result,
        )
