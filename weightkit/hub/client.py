"""What `download` and `push` share: the endpoint and token, the repo's file list with the hashes
the Hub keeps for each file, and the one place that turns huggingface_hub failures into
WeightkitErrors that say what to do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi, get_token
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    DisabledRepoError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers

from weightkit import __version__
from weightkit.errors import WeightkitError
from weightkit.io.hashing import GIT_SHA1, new_hash
from weightkit.options import HubOptions

# where `download` keeps unfinished files, inside the output folder; `push` never uploads it
PARTIAL_DIR = ".weightkit-partial"
_READ_CHUNK = 8 << 20
RETRY_LATER = "Try again later; if it persists, report it with the full message."
_LOGIN_HINT = (
    "Log in with `hf auth login`, or set HF_TOKEN to a token from {endpoint}/settings/tokens."
)


class HubError(WeightkitError):
    """The Hub refused or failed a request: no such repo or revision, gated, no access, offline."""


@dataclass(frozen=True)
class Hub:
    """An endpoint and the token to use there (None: anonymous), with the files fetched at once
    and whether progress bars show."""

    endpoint: str
    token: str | None
    jobs: int = 4
    show_progress: bool = False

    @property
    def api(self) -> HfApi:
        # token=False, not None: with None huggingface_hub would look for a stored token again
        return HfApi(
            endpoint=self.endpoint,
            token=self.token or False,
            library_name="weightkit",
            library_version=__version__,
        )

    def headers(self) -> dict[str, str]:
        return build_hf_headers(
            token=self.token or False, library_name="weightkit", library_version=__version__
        )


def connect(options: HubOptions | None = None) -> Hub:
    """The endpoint from `options`, HF_ENDPOINT or huggingface.co; the token from `options`,
    HF_TOKEN or the saved login."""
    options = options or HubOptions()
    # read HF_ENDPOINT now: huggingface_hub reads it once, when it is first imported
    endpoint = options.endpoint or os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT
    return Hub(
        endpoint.rstrip("/"), options.token or get_token(), options.jobs, options.show_progress
    )


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at a commit, with the hash the Hub lists for it."""

    path: str
    size: int
    sha256: str | None = None  # LFS files: sha256 of the content (the LFS oid)
    blob_id: str | None = None  # other files: git blob sha1

    @property
    def algo(self) -> str | None:
        return "sha256" if self.sha256 else GIT_SHA1 if self.blob_id else None

    @property
    def digest(self) -> str | None:
        return self.sha256 or self.blob_id

    def new_hasher(self) -> Any:
        """A hash object that, fed the file's bytes, gives `digest`."""
        return new_hash(self.algo or "sha256", self.size)

    def check(self, size: int, hexdigest: str) -> str | None:
        """What is wrong with a copy of `size` bytes hashing to `hexdigest`; None if nothing."""
        if size != self.size:
            return f"is {size} bytes, the Hub lists {self.size}"
        if self.digest and hexdigest != self.digest:
            return f"has {self.algo} {hexdigest}, the Hub lists {self.digest}"
        return None

    def matches(self, local: Path) -> bool:
        """True when the local file is this one (same size, same hash)."""
        size = local.stat().st_size
        if size != self.size:
            return False
        hasher = self.new_hasher()
        update_from_file(hasher, local)
        return self.check(size, hasher.hexdigest()) is None


def update_from_file(hasher: Any, path: Path) -> int:
    """Feed the file's bytes to `hasher`; returns how many there were."""
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            hasher.update(chunk)
            n += len(chunk)
    return n


def list_files(hub: Hub, repo: str, revision: str | None) -> tuple[str, list[RemoteFile]]:
    """The commit `revision` points to, and the repo's files there with sizes and hashes."""
    revision = revision or hf_constants.DEFAULT_REVISION
    with hub_errors(hub, repo, revision):
        info = hub.api.model_info(repo, revision=revision, files_metadata=True)
    files = [
        RemoteFile(
            s.rfilename,
            s.lfs.size if s.lfs else (s.size or 0),
            sha256=s.lfs.sha256 if s.lfs else None,
            blob_id=None if s.lfs else s.blob_id,
        )
        for s in info.siblings or []
    ]
    return info.sha or "", sorted(files, key=lambda f: f.path)


@contextmanager
def hub_errors(
    hub: Hub, repo: str, revision: str | None = None, path: str | None = None
) -> Iterator[None]:
    """Re-raise huggingface_hub and network failures as HubError, naming the repo (and the file
    `path`, for a file request) and what to do."""
    try:
        yield
    except HfHubHTTPError as e:
        raise _translate(e, hub, repo, revision, path) from None
    except OfflineModeIsEnabled:
        raise HubError(
            f"cannot reach {hub.endpoint} for {repo}: HF_HUB_OFFLINE is set",
            "Unset HF_HUB_OFFLINE to use the network.",
        ) from None
    except httpx2.TransportError as e:
        raise HubError(
            f"cannot reach {hub.endpoint} for {repo}: {_redact(str(e), hub)}",
            "Check the network connection and proxy, or HF_ENDPOINT / `endpoint`.",
        ) from None


def _translate(
    e: HfHubHTTPError, hub: Hub, repo: str, revision: str | None, path: str | None
) -> HubError:
    login = _LOGIN_HINT.format(endpoint=hub.endpoint)
    status = e.response.status_code if e.response is not None else None
    if isinstance(e, GatedRepoError):
        return HubError(
            f"{repo} is a gated repo and this account has no access to it yet",
            f"Accept its conditions at {hub.endpoint}/{repo}, then use a token of that "
            f"account. {login if not hub.token else ''}".strip(),
        )
    if isinstance(e, RepositoryNotFoundError):
        if not hub.token:
            return HubError(
                f"repo {repo} was not found on {hub.endpoint}, or it is private "
                "and no token was given",
                f"Check the name. {login}",
            )
        return HubError(
            f"repo {repo} was not found on {hub.endpoint}, or the token in use cannot read it",
            "Check the name and that the token's account has access.",
        )
    if isinstance(e, RevisionNotFoundError):
        return HubError(
            f"revision {revision!r} was not found in {repo}",
            "Give a branch, tag or commit sha that exists (`revision`).",
        )
    if isinstance(e, RemoteEntryNotFoundError):
        return HubError(
            f"{path or 'a file'} is listed in {repo} but could not be fetched "
            f"from {revision}: it is not there",
            "The repo changed during the download; run the command again.",
        )
    if isinstance(e, DisabledRepoError):
        return HubError(f"{repo} has been disabled on {hub.endpoint}")
    if status in (401, 403):
        what = "no token was given" if not hub.token else "the token in use lacks the permission"
        return HubError(
            f"{hub.endpoint} refused the request for {repo} (HTTP {status}): {what}",
            login
            if not hub.token
            else "Use a token with write access to that repo or organization.",
        )
    detail = _redact(e.server_message or str(e).splitlines()[0], hub)
    return HubError(f"{hub.endpoint} answered HTTP {status} for {repo}: {detail}", RETRY_LATER)


def _redact(text: str, hub: Hub) -> str:
    # belt and braces: no message of ours ever shows the token
    return text.replace(hub.token, "***") if hub.token else text
