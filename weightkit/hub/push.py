"""`weightkit push`: upload a folder to a Hub repo (created if needed) in one commit, sending
only the files the remote does not already have with the same content."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import (
    DEFAULT_IGNORE_PATTERNS,
    are_progress_bars_disabled,
    disable_progress_bars,
    enable_progress_bars,
    filter_repo_objects,
)

from weightkit.errors import InputError
from weightkit.hub.client import PARTIAL_DIR, HubError, connect, hub_errors, list_files
from weightkit.options import HubOptions
from weightkit.progress import human_bytes

_IGNORE = [*DEFAULT_IGNORE_PATTERNS, PARTIAL_DIR, f"{PARTIAL_DIR}/*"]


@dataclass
class PushResult:
    """What `push` did: the commit, the files sent and the files the remote had already."""

    repo: str
    revision: str  # the branch committed to
    folder: Path
    commit_url: str  # the new commit, or the branch head when there was nothing to upload
    commit: str = ""  # its sha
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # the remote had them already
    nbytes: int = 0  # the size of the files uploaded
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.repo}: {len(self.uploaded)} files uploaded ({human_bytes(self.nbytes)}), "
            f"{len(self.unchanged)} unchanged"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "revision": self.revision,
            "folder": str(self.folder),
            "commit": self.commit,
            "commit_url": self.commit_url,
            "files": sorted([*self.uploaded, *self.unchanged]),
            "uploaded": self.uploaded,
            "unchanged": self.unchanged,
            "bytes": self.nbytes,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
        }


def push(
    folder: str | Path,
    repo: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    hub: HubOptions | None = None,
) -> PushResult:
    """Upload `folder` to `repo` (a branch of it with `revision`), creating the repo (private
    with `private`) and the branch when missing. Large files go through LFS; files whose
    content the remote already has are not sent. `hub`: the endpoint, token and progress bars.
    Prints nothing; returns a PushResult: the commit URL (the branch head when nothing was
    sent), the files uploaded and the files left unchanged."""
    start = time.perf_counter()
    folder = Path(folder)
    local = _local_files(folder)
    client = connect(hub)
    if not client.token:
        raise HubError(
            f"pushing to {repo} needs a Hugging Face token with write access",
            "Log in with `hf auth login`, or set HF_TOKEN.",
        )
    branch = revision or hf_constants.DEFAULT_REVISION
    with hub_errors(client, repo, branch):
        client.api.create_repo(repo, private=private or None, exist_ok=True)
        if branch != hf_constants.DEFAULT_REVISION:
            client.api.create_branch(repo, branch=branch, exist_ok=True)
    head, remote = list_files(client, repo, branch)
    remote_by_path = {f.path: f for f in remote}
    changed = [
        p
        for p, path in local.items()
        if p not in remote_by_path or not remote_by_path[p].matches(path)
    ]
    result = PushResult(
        repo,
        branch,
        folder,
        f"{client.endpoint}/{repo}/commit/{head}",
        head,
        changed,
        [p for p in local if p not in changed],
        sum(local[p].stat().st_size for p in changed),
    )
    if changed:
        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=local[p]) for p in changed]
        with hub_errors(client, repo, branch), _hub_progress(client.show_progress):
            info = client.api.create_commit(
                repo,
                operations,
                revision=branch,
                commit_message=message or f"Upload {len(changed)} files with weightkit",
            )
        result.commit_url, result.commit = info.commit_url, info.oid
    result.seconds = time.perf_counter() - start
    return result


def _local_files(folder: Path) -> dict[str, Path]:
    """Path in repo -> file, for every file in `folder` but git, cache and partial downloads."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    kept = {p: files[p] for p in filter_repo_objects(files, ignore_patterns=_IGNORE)}
    if not kept:
        raise InputError(f"{folder} has no files to push")
    return kept


@contextmanager
def _hub_progress(show: bool) -> Iterator[None]:
    """huggingface_hub's own upload bars, silenced unless progress bars are shown."""
    was_disabled = are_progress_bars_disabled()
    if not show:
        disable_progress_bars()
    try:
        yield
    finally:
        if not show and not was_disabled:
            enable_progress_bars()
