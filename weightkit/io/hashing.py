"""Hashing files: the algorithms checksums are in, one file's digest, and many files at once.

Files are hashed in a thread pool: reads and hashlib both release the GIL on large blocks, so N
threads hash N files at N cores' speed. Nothing here loads torch or huggingface_hub.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from weightkit.errors import InputError
from weightkit.options import show_progress
from weightkit.progress import ByteProgress

ALGOS = {"md5": 32, "sha256": 64}  # algorithm -> hex digits of its hash
GIT_SHA1 = "git-sha1"  # not a checksum-file algorithm: the Hub's name for small files

_BLOCK = 8 * 1024 * 1024  # large reads: few syscalls, and hashlib drops the GIL per block


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


def hash_files(
    folder: Path, names: list[str], algo: str, jobs: int | None, progress: bool | None, title: str
) -> dict[str, str]:
    """{name: hex digest} of the files `names` (relative to `folder`), hashed in parallel."""
    return hash_paths({n: (folder / n, algo) for n in names}, jobs, progress, title)


def hash_paths(
    todo: dict[str, tuple[Path, str]], jobs: int | None, progress: bool | None, title: str
) -> dict[str, str]:
    """{key: hex digest} of each (file, algorithm) in `todo`, hashed in parallel, with a progress
    bar called `title` (`progress` None: on a terminal only)."""
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

        return parallel(one, order, jobs)


def parallel(
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
