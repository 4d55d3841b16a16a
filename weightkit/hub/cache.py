"""Hub repo ids (`org/name`, `org/name@revision`) and catalog release names as model inputs,
read where the Hugging Face cache keeps them, and fetched into it when it lacks them.

The cache is laid out as huggingface_hub lays it out, so that a model `from_pretrained` fetched is
used where it lies and what weightkit fetches is found by transformers afterwards:

    $HF_HUB_CACHE/models--org--name/
        blobs/<sha256 of an LFS file, or git blob sha1 of a small file>
        snapshots/<commit>/<path in the repo> -> ../../blobs/<name>   (relative links)
        refs/<branch or tag>                  holds the commit

A model is complete in the cache, and then read without any network request and without a
write, when (decided from the cache alone):
- the revision is a commit with a snapshot folder, or `refs/<revision>` names one;
- the snapshot has no link whose blob is gone;
- for an adapter (role "lora"): adapter_config.json and an adapter_model.* file;
- for any other role: config.json (or a raw Meta folder's params.json), and weight files: every
  shard the first index names (model.safetensors.index.json, then pytorch_model.bin.index.json),
  or without an index the weight files of the first layout found, with no gap in a
  `-0000K-of-0000N` series;
- where huggingface_hub cached the repo's file listing for that commit (trees/<commit>.json),
  every file weightkit would fetch from that listing.
Otherwise the repo is listed on the Hub (one request) and what the cache lacks of what the role
reads (`select_files`: one weight layout, no docs) is fetched into it with weightkit's download
(weightkit/hub/download.py): each blob grows in blobs/<name>.part (an interrupted run resumes it
with a Range request), its size and hash are checked, then it is moved to blobs/<name> and
linked; the ref is written last. With HF_HUB_OFFLINE set, a repo or file the cache lacks is one
error naming it, and nothing is requested.

`weightkit verify org/name` audits a snapshot in the cache: weightkit/hub/audit.py.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import constants as hf_constants
from huggingface_hub import get_cached_repo_tree
from huggingface_hub.errors import CachedRepoTreeNotFoundError
from huggingface_hub.file_download import REGEX_COMMIT_HASH, repo_folder_name
from huggingface_hub.utils import HFValidationError, validate_repo_id

from weightkit.catalog import Release, find_release
from weightkit.errors import InputError, OutputError
from weightkit.hub.client import RETRY_LATER, HubError, RemoteFile, connect, list_files
from weightkit.hub.download import (
    ADAPTER_PATTERNS,
    DownloadResult,
    fetch_files,
    fetched_text,
    manifest_of_repo,
    plan_fetch,
    refuse_escaping_names,
    select,
)
from weightkit.options import HubOptions

ROLES = ("model", "base", "raw", "tuned", "diff", "lora")
# the part of a catalog release each role reads; "raw" and "base" have none: a release is
# applied to a base model that it does not publish
RELEASE_PARTS = {"model": "diff", "diff": "diff", "lora": "lora", "tuned": "recovered"}
PART_SUFFIX = ".part"  # blobs/<name>.part: a blob being fetched

# The weight layouts weightkit's reader (weightkit/io/reader.py) reads, in the order it looks for
# them: (index file or None, glob of the weight files at the top of the repo). Only the first
# layout a repo has is fetched: a repo holding safetensors and .bin copies costs one of them.
WEIGHT_LAYOUTS = (
    ("model.safetensors.index.json", "*.safetensors"),
    ("pytorch_model.bin.index.json", "*.bin"),
    (None, "*.safetensors"),
    (None, "pytorch_model*.bin"),
    (None, "consolidated.*.pth"),
    (None, "*.bin"),
    (None, "*.pth"),
)
INDEX_NAMES = tuple(index for index, _ in WEIGHT_LAYOUTS if index)
CONFIG_NAMES = ("config.json", "params.json")  # an HF model's, a raw Meta folder's
# weights of any framework: of these, only the chosen layout's files are fetched
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pth",
    ".pt",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".onnx_data",
    ".gguf",
    ".ot",
    ".tflite",
    ".npz",
)
# what no run reads, fetched for no role (matched on the file name)
NOT_READ = (
    ".gitattributes",
    "*.md",
    "LICENSE*",
    "NOTICE*",
    "USE_POLICY*",
    "*.png",
    "*.jpg",
    "*.jpeg",
    "*.gif",
    "*.svg",
    "*.pdf",
)
_SERIES = re.compile(r"(.*-)(\d+)-of-(\d+)(\..+)")  # model-00001-of-00003.safetensors
_OFFLINE_HINT = "Unset HF_HUB_OFFLINE to fetch it into the cache, or pass a local folder instead."


@dataclass
class CachedModel:
    """A model input resolved in the Hugging Face cache."""

    repo: str
    revision: str
    commit: str
    folder: Path  # the snapshot folder, snapshots/<commit>: read the model there
    missing: list[RemoteFile] = field(default_factory=list)  # blobs the cache lacked (dry run:
    # what would be downloaded), with their sizes
    downloaded: list[str] = field(default_factory=list)  # files this call fetched into the cache
    nbytes: int = 0  # bytes received over the network by this call
    release: str | None = None  # the catalog release the spec named, if it named one
    manifest: Path | None = None  # the catalog manifest of this repo, if the catalog has one
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)  # what was found or fetched, in order

    def summary(self) -> str:
        return "\n".join(self.notes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "revision": self.revision,
            "commit": self.commit,
            "folder": str(self.folder),
            "release": self.release,
            "manifest": str(self.manifest) if self.manifest else None,
            "dry_run": self.dry_run,
            "downloaded": self.downloaded,
            "bytes": self.nbytes,
            "missing": [{"path": f.path, "size": f.size} for f in self.missing],
            "notes": self.notes,
        }


@dataclass(frozen=True)
class RepoCache:
    """One model repo's folder in the Hugging Face cache."""

    repo: str
    root: Path  # the cache: HF_HUB_CACHE

    @classmethod
    def of(cls, repo: str, cache_dir: str | Path | None = None) -> RepoCache:
        return cls(repo, Path(cache_dir) if cache_dir is not None else cache_root())

    @property
    def path(self) -> Path:
        return self.root / repo_folder_name(repo_id=self.repo, repo_type="model")

    def snapshot(self, commit: str) -> Path:
        return self.path / "snapshots" / commit

    def blob(self, name: str) -> Path:
        return self.path / "blobs" / name

    def commit_of(self, revision: str) -> str | None:
        """The commit `revision` is in the cache (a commit with a snapshot, or a ref's)."""
        if REGEX_COMMIT_HASH.fullmatch(revision):
            return revision if self.snapshot(revision).is_dir() else None
        ref = self.path / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else None
        return commit if commit and self.snapshot(commit).is_dir() else None

    def holds(self, commit: str, f: RemoteFile) -> bool:
        """The snapshot has the file, of the size the Hub lists (its hash: see `verify`)."""
        pointer = self.snapshot(commit) / f.path
        return pointer.is_file() and pointer.stat().st_size == f.size

    def has_blob(self, f: RemoteFile) -> bool:
        blob = self.blob(f.digest or "")
        return blob.is_file() and blob.stat().st_size == f.size

    def link(self, commit: str, path: str, blob: str) -> None:
        """snapshots/<commit>/<path> -> blobs/<blob>, relative, as huggingface_hub links."""
        pointer = self.snapshot(commit) / path
        pointer.parent.mkdir(parents=True, exist_ok=True)
        if pointer.is_symlink() or pointer.exists():
            pointer.unlink()
        os.symlink(os.path.relpath(self.blob(blob), pointer.parent), pointer)

    def write_ref(self, revision: str, commit: str) -> None:
        """refs/<revision> = commit, atomically; nothing for a commit, or a ref already right."""
        ref = self.path / "refs" / revision
        if revision == commit or (ref.is_file() and ref.read_text().strip() == commit):
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f"{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref)

    def links(self) -> Iterable[tuple[Path, Path | None]]:
        """(link, the blob it points to or None when it points outside blobs/) for every link of
        every snapshot."""
        blobs = self.path / "blobs"
        for pointer in sorted((self.path / "snapshots").rglob("*")):
            if pointer.is_symlink():
                target = Path(os.path.normpath(pointer.parent / os.readlink(pointer)))
                yield pointer, target if target.parent == blobs else None

    def remove_blob(self, name: str) -> list[Path]:
        """Delete blobs/<name> and every snapshot link to it; returns what was removed."""
        removed = [pointer for pointer, blob in self.links() if blob == self.blob(name)]
        for pointer in removed:
            pointer.unlink()
        if self.blob(name).is_file() or self.blob(name).is_symlink():
            self.blob(name).unlink()
            removed.append(self.blob(name))
        return removed


@dataclass(frozen=True)
class CacheLayout:
    """Where `fetch_files` puts files fetched into the cache: each grows in blobs/<name>.part,
    becomes blobs/<name>, and every path of the commit with that content is linked to it."""

    store: RepoCache
    commit: str
    paths: dict[str, list[str]]  # blob name -> the paths of the commit with that content
    space_hint: str = (
        "Free some space, or set HF_HUB_CACHE to a folder on a disk with room, "
        "and run the same command again: it resumes."
    )

    @property
    def root(self) -> Path:
        return self.store.path

    def target(self, f: RemoteFile) -> Path:
        return self.store.snapshot(self.commit) / f.path

    def part(self, f: RemoteFile) -> Path:
        return self.store.blob(f"{f.digest}{PART_SUFFIX}")

    def place(self, f: RemoteFile, part: Path) -> None:
        os.replace(part, self.store.blob(f.digest or ""))
        for path in self.paths[f.digest or ""]:
            self.store.link(self.commit, path, f.digest or "")


@dataclass(frozen=True)
class _Target:
    repo: str
    revision: str
    release: str | None
    manifest: Path | None

    @property
    def name(self) -> str:
        return f"{self.repo}@{self.revision}"


# --- what a spec names ---------------------------------------------------------------------------


def cache_root() -> Path:
    """The Hugging Face cache: HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE (its old name), else
    HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub, with ~ and
    $VARS expanded as huggingface_hub does. Read at each call: huggingface_hub reads the
    variables once, when it is imported."""
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"
    )
    hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(hub)))


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), huggingface_hub's switch: its constant, or the
    variable as it is now (the constant is read at import)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return hf_constants.HF_HUB_OFFLINE or value.upper() in hf_constants.ENV_VARS_TRUE_VALUES


def is_hub_spec(spec: str) -> bool:
    """True for `org/name`, `org/name@revision` and a release name in checksums/catalog.json.
    The caller has checked that no file or folder of that name exists."""
    return _split(spec) is not None or _release(spec) is not None


def _split(spec: str) -> tuple[str, str | None] | None:
    """(repo, revision or None) of `org/name[@revision]`; None when `spec` is not one."""
    repo, at, revision = spec.partition("@")
    if repo.count("/") != 1 or (at and not _plain_revision(revision)):
        return None
    try:
        validate_repo_id(repo)
    except HFValidationError:
        return None
    return repo, revision or None


def _plain_revision(revision: str) -> bool:
    # branch, tag or commit; refs/pr/1 has slashes, but no part may leave refs/ in the cache
    return all(p not in ("", ".", "..") for p in revision.split("/")) and "\\" not in revision


def _release(name: str) -> Release | None:
    try:
        return find_release(name)
    except InputError:  # no catalog at all: then no name is a release
        return None


def spec_target(spec: str, role: str, fp16: bool) -> _Target:
    if role not in ROLES:
        raise InputError(f"unknown model role {role!r}", f"Use one of: {', '.join(ROLES)}.")
    split = _split(spec)
    if split is not None:
        repo, revision = split
        return _Target(
            repo, revision or hf_constants.DEFAULT_REVISION, None, manifest_of_repo(repo)
        )
    release = _release(spec)
    if release is None:
        raise InputError(
            f"{spec!r} is no file or folder, no Hub repo id (org/name[@revision]) "
            "and no release in the catalog",
            "Check the path, or give a Hub repo id such as huggyllama/llama-7b.",
        )
    if role not in RELEASE_PARTS:
        base = f"; its base model is {release.base}" if release.base else ""
        raise InputError(
            f"release {spec} publishes no base model to pass as `{role}`{base}",
            f"Pass the base model as `{role}` (an HF folder, a raw Meta folder or a "
            "Hub id), and the release as `diff` or `lora`.",
        )
    part = RELEASE_PARTS[role]
    if fp16:
        if part != "diff":
            raise InputError(f"release {spec} has an fp16 diff, not an fp16 {part}")
        part = "diff-fp16"
    found = release.hub_part(part)
    return _Target(found.repo or "", hf_constants.DEFAULT_REVISION, spec, found.manifest)


# --- resolving -----------------------------------------------------------------------------------


def resolve_model(
    spec: str,
    *,
    role: str = "model",
    hub: HubOptions | None = None,
    dry_run: bool = False,
    fp16: bool = False,
    cache_dir: str | Path | None = None,
) -> CachedModel:
    """The model `spec` names, in the Hugging Face cache: read from there when it is complete
    (no request, no write); else what it lacks is fetched into it first, or with `dry_run`
    only listed in `missing`. Prints nothing: what it found, fetched or would fetch is in the
    result's `notes`. `hub`: the endpoint, token, files fetched at once and progress bars.

    `role` ("model", "base", "raw", "tuned", "diff", "lora") picks what is read: "lora" the
    adapter files, the others the model's config, tokenizer and one weight layout. A release
    name gives its "diff" part (its "diff-fp16" part with `fp16`) or, as "lora", its "lora" part.
    """
    target = spec_target(spec, role, fp16)
    store = RepoCache.of(target.repo, cache_dir)
    commit = store.commit_of(target.revision)
    lacking = lacks(store, commit, role) if commit else []
    if commit and not lacking:
        return CachedModel(
            target.repo,
            target.revision,
            commit,
            store.snapshot(commit),
            release=target.release,
            manifest=target.manifest,
            dry_run=dry_run,
            notes=[
                f"{target.name}: complete in the Hugging Face cache, read "
                f"from {store.snapshot(commit)}"
            ],
        )
    if offline():
        raise _offline_error(target, store, commit, lacking)
    try:
        return _fetch(target, store, role, hub, dry_run)
    except PermissionError as e:
        raise OutputError(
            f"cannot write to the Hugging Face cache {store.root}: {e.strerror} ({e.filename})",
            "Check its permissions, or set HF_HUB_CACHE to a folder you can write.",
        ) from None


def _offline_error(
    target: _Target, store: RepoCache, commit: str | None, lacking: list[str]
) -> HubError:
    if commit is None:
        what = "is not in" if not store.path.is_dir() else "has no snapshot of that revision in"
        return HubError(
            f"{target.repo} {what} the Hugging Face cache (revision "
            f"{target.revision!r}, {store.root}), and HF_HUB_OFFLINE is set, so "
            "it cannot be downloaded",
            _OFFLINE_HINT,
        )
    return HubError(
        f"the cached snapshot of {target.name} (commit {commit[:8]}) lacks "
        f"{', '.join(lacking)}, and HF_HUB_OFFLINE is set, so it cannot be "
        "downloaded",
        _OFFLINE_HINT,
    )


def _fetch(
    target: _Target, store: RepoCache, role: str, options: HubOptions | None, dry_run: bool
) -> CachedModel:
    hub = connect(options)
    commit, listed = list_files(hub, target.repo, target.revision)
    files = select_files(listed, role)
    folder = store.snapshot(commit)
    _check_selection(target, commit, files, listed, role)
    refuse_escaping_names(files, folder, target.repo, within=store.path)
    paths: dict[str, list[str]] = {}
    for f in files:
        paths.setdefault(f.digest or "", []).append(f.path)
    todo = [f for f in files if not store.holds(commit, f)]
    # one download per content, and none for a content another commit already brought
    fetch = list({f.digest: f for f in todo if not store.has_blob(f)}.values())
    model = CachedModel(
        target.repo,
        target.revision,
        commit,
        folder,
        missing=fetch,
        release=target.release,
        manifest=target.manifest,
        dry_run=dry_run,
    )
    layout = CacheLayout(store, commit, paths)
    if dry_run:
        model.notes.append(plan_fetch(fetch, len(files), layout).summary(target.repo, commit))
        return model

    start = time.perf_counter()
    for f in todo:
        if store.has_blob(f):
            store.link(commit, f.path, f.digest or "")
    result = DownloadResult(target.repo, target.revision, commit, store.path)
    fetch_files(hub, target.repo, commit, fetch, layout, result)
    store.write_ref(target.revision, commit)  # last: an interrupted run leaves the old ref
    still = lacks(store, commit, role)
    if still:
        raise HubError(
            f"{target.repo}@{commit[:8]} is incomplete on {hub.endpoint}: it lacks "
            f"{', '.join(still)}",
            "Tell the repo's owners, or pick another revision.",
        )
    model.downloaded = sorted(p for f in fetch for p in paths[f.digest or ""])
    model.nbytes = result.nbytes
    model.notes.append(
        fetched_text(
            target.repo,
            commit,
            len(fetch),
            result.nbytes,
            time.perf_counter() - start,
            len(files) - len(todo),
            f"the Hugging Face cache {store.path}",
        )
    )
    return model


def _check_selection(
    target: _Target, commit: str, files: list[RemoteFile], listed: list[RemoteFile], role: str
) -> None:
    """Refuse, before any download, a repo that cannot be read in `role`."""
    lacking = _lacks({f.path for f in files}, role, shards_of=None)
    if lacking:
        kind = "an adapter" if role == "lora" else "a model"
        raise InputError(
            f"{target.repo}@{commit[:8]} is not {kind}: it has no {' and no '.join(lacking)}",
            f"It has: {', '.join(f.path for f in listed) or 'no files'}.",
        )
    nameless = [f.path for f in files if not f.digest]
    if nameless:
        raise HubError(
            f"the Hub lists no hash for {', '.join(nameless)} in {target.repo}, and "
            "the cache names each file by its hash",
            RETRY_LATER,
        )


# --- what to fetch, and what complete means ------------------------------------------------------


def select_files(files: list[RemoteFile], role: str) -> list[RemoteFile]:
    """What weightkit fetches of a repo to read it in `role`: for "lora" its adapter files; for
    the others every file but the adapter's, the docs (NOT_READ) and the weights of other
    layouts than the first the repo has (see WEIGHT_LAYOUTS)."""
    if role == "lora":
        return select(files, "lora")
    files = [
        f
        for f in select(files, "base")
        if not any(fnmatch(PurePosixPath(f.path).name, p) for p in NOT_READ)
    ]
    layout = _weight_layout({f.path for f in files})
    index, pattern = layout or (None, "")

    def keep(path: str) -> bool:
        if path == index or (pattern and "/" not in path and fnmatch(path, pattern)):
            return True
        return PurePosixPath(path).suffix not in WEIGHT_SUFFIXES and path not in INDEX_NAMES

    return [f for f in files if keep(f.path)]


def _weight_layout(names: set[str]) -> tuple[str | None, str] | None:
    """The first of WEIGHT_LAYOUTS that `names` (repo paths) have; adapter files aside."""
    top = [n for n in names if "/" not in n and not _is_adapter(n)]
    for index, pattern in WEIGHT_LAYOUTS:
        if (index in names) if index else any(fnmatch(n, pattern) for n in top):
            return index, pattern
    return None


def _is_adapter(name: str) -> bool:
    return any(fnmatch(PurePosixPath(name).name, p) for p in ADAPTER_PATTERNS)


def lacks(store: RepoCache, commit: str, role: str) -> list[str]:
    """What the cached snapshot of `commit` lacks to be read in `role` (the rule in the module
    docstring), from the cache alone; [] when it is complete."""
    folder = store.snapshot(commit)
    present, dangling = _snapshot_files(folder)
    need = [f"{p} (its blob is gone)" for p in dangling]
    need += _lacks(present, role, shards_of=lambda index: _index_shards(folder / index))
    listing = cached_listing(store, commit)
    if listing is not None:
        need += [
            f.path
            for f in select_files(listing, role)
            if f.path not in present and f.path not in dangling
        ]
    return list(dict.fromkeys(need))


def _lacks(
    present: set[str], role: str, shards_of: Callable[[str], list[str] | None] | None
) -> list[str]:
    """The completeness rule over the repo paths `present`; `shards_of(index)` reads the shard
    names an index lists (None: it cannot be read; no `shards_of`: not checked)."""
    if role == "lora":
        need = [] if "adapter_config.json" in present else ["adapter_config.json"]
        if not any(fnmatch(p, "adapter_model.*") for p in present):
            need.append("adapter_model.safetensors (or .bin)")
        return need
    need = [] if present.intersection(CONFIG_NAMES) else ["config.json"]
    layout = _weight_layout(present)
    if layout is None:
        return [*need, "weight files (*.safetensors, *.bin or consolidated.*.pth)"]
    index, pattern = layout
    if index is None:
        top = [p for p in present if "/" not in p and not _is_adapter(p)]
        return need + _series_gaps(sorted(n for n in top if fnmatch(n, pattern)))
    if shards_of is None:
        return need
    shards = shards_of(index)
    if shards is None:
        return [*need, f"a readable {index}"]
    return need + [f"{s} (named in {index})" for s in shards if s not in present]


def _series_gaps(names: list[str]) -> list[str]:
    """The files missing from the `-0000K-of-0000N` series that `names` belong to."""
    have, gaps = set(names), []
    for name in names:
        m = _SERIES.fullmatch(name)
        if m:
            prefix, k, total, suffix = m.groups()
            gaps += [
                n
                for i in range(1, int(total) + 1)
                if (n := f"{prefix}{i:0{len(k)}d}-of-{total}{suffix}") not in have
            ]
    return list(dict.fromkeys(gaps))


def _snapshot_files(folder: Path) -> tuple[set[str], list[str]]:
    """(repo paths of the files in a snapshot folder, paths of its links whose blob is gone)."""
    present, dangling = set(), []
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root, name)
            rel = path.relative_to(folder).as_posix()
            if path.is_file():
                present.add(rel)
            elif path.is_symlink():
                dangling.append(rel)
    return present, sorted(dangling)


def _index_shards(index: Path) -> list[str] | None:
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def cached_listing(store: RepoCache, commit: str) -> list[RemoteFile] | None:
    """The repo's files at `commit` as huggingface_hub's snapshot_download cached them, if it
    did (read from disk only)."""
    try:
        tree = get_cached_repo_tree(store.repo, revision=commit, cache_dir=store.root)
    except CachedRepoTreeNotFoundError:
        return None
    return [RemoteFile(f.path, f.size) for f in tree]
