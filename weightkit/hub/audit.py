"""`weightkit verify org/name`: a repo's snapshot in the Hugging Face cache audited.

huggingface_hub trusts whatever bytes lie in its cache; each blob here is hashed against the
name the cache gave it (the sha256 of an LFS file, the git blob sha1 of a small one), and `fix`
removes the damaged blobs and their links, so that the next run that reads the repo downloads
them again. Nothing is fetched.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from weightkit.checksums import (
    CACHE,
    EXTRA,
    MISMATCH,
    MISSING,
    OK,
    CheckOptions,
    Row,
    VerifyReport,
    verify_folder,
)
from weightkit.errors import InputError
from weightkit.hub.cache import RepoCache, cached_listing, spec_target
from weightkit.hub.client import HubError
from weightkit.io.hashing import GIT_SHA1, hash_paths

_BLOB_NAME = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git sha1, a sha256


@dataclass(frozen=True)
class CachedFile:
    """One file of a cached snapshot, as the audit sees it."""

    path: str  # in the repo
    blob: Path | None  # the blob its link points to; None: a copy, or a link outside blobs/
    note: str = ""  # why there is no blob to check

    @property
    def blob_name(self) -> str | None:
        return self.blob.name if self.blob is not None else None

    @property
    def algo(self) -> str | None:
        """How the cache named the blob: sha256 (LFS files) or git-sha1 (small files)."""
        name = self.blob_name or ""
        return None if not _BLOB_NAME.fullmatch(name) else "sha256" if len(name) == 64 else GIT_SHA1


@dataclass(frozen=True)
class Snapshot:
    """A repo's snapshot found in the cache, for `weightkit verify org/name`."""

    store: RepoCache
    revision: str
    commit: str

    @property
    def folder(self) -> Path:
        return self.store.snapshot(self.commit)

    def files(self) -> list[CachedFile]:
        found = []
        links = dict(self.store.links())
        for root, _, names in os.walk(self.folder):
            for name in names:
                path = Path(root, name)
                rel = path.relative_to(self.folder).as_posix()
                if not path.is_symlink():
                    found.append(
                        CachedFile(
                            rel, None, "a copy, not a link into blobs/: nothing names its hash"
                        )
                    )
                elif links.get(path) is None:
                    found.append(
                        CachedFile(rel, None, f"a link outside blobs/ ({os.readlink(path)})")
                    )
                else:
                    found.append(CachedFile(rel, links[path]))
        return sorted(found, key=lambda f: f.path)

    def listed_sizes(self) -> dict[str, int]:
        """Sizes by repo path from huggingface_hub's cached listing; {} when there is none."""
        listing = cached_listing(self.store, self.commit)
        return {f.path: f.size for f in listing or []}


def cached_snapshot(spec: str, *, cache_dir: str | Path | None = None) -> Snapshot:
    """The snapshot `spec` (a repo id or release name) has in the cache; nothing is fetched."""
    target = spec_target(spec, "model", False)
    store = RepoCache.of(target.repo, cache_dir)
    commit = store.commit_of(target.revision)
    if commit is None:
        raise HubError(
            f"{target.name} is not in the Hugging Face cache {store.root}: "
            "there is nothing to check",
            "A run that reads it (e.g. merge_lora with it as `base`) or "
            "huggingface_hub downloads it there.",
        )
    return Snapshot(store, target.revision, commit)


def verify_cached(spec: str, options: CheckOptions, fix: bool = False) -> VerifyReport:
    """`verify` of a repo id or release name: its snapshot in the cache (nothing is fetched)
    checked as a folder against `options.manifest` or `.known`, or without them each blob
    against its name (`fix`: the damaged ones and their links are removed)."""
    snapshot = cached_snapshot(spec)
    if options.manifest is not None or options.known is not None:
        if fix:
            raise InputError(
                "`fix` removes what does not match the cache's own hashes; "
                "it does not go with `manifest` or `known`",
                "Drop one of them.",
            )
        return verify_folder(snapshot.folder, options)
    if options.algo is not None:
        raise InputError(
            f"the Hugging Face cache names each file of {spec} by its sha256 or git "
            f"sha1; `algo` {options.algo} has nothing to check",
            "Drop `algo`.",
        )
    return _check_cache(snapshot, options.jobs, options.progress, fix)


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
    digests = hash_paths(blobs, jobs, progress, title="verify")
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
