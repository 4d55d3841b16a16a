"""Hub ids and release names resolved in the Hugging Face cache (weightkit/hub/cache.py), against
caches that huggingface_hub itself lays out from the local fake Hub in conftest.py."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_model
from huggingface_hub import hf_hub_download, snapshot_download, try_to_load_from_cache

import weightkit.hub.cache as cache_mod
from weightkit.errors import InputError, OutputError
from weightkit.hub.cache import (
    RepoCache,
    _lacks,
    cache_root,
    is_hub_spec,
    resolve_model,
    select_files,
)
from weightkit.hub.client import HubError, RemoteFile

from .conftest import FakeHub, git_sha1, kill_once_grown, sha256, state

# a model repo: *.safetensors are LFS (>= 1 KiB), the rest are small files
MODEL = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": bytes(range(256)) * 12,
    "tokenizer.json": b'{"version": "1.0"}',
    "README.md": b"# toy\n",
}
LORA = {
    "adapter_config.json": b'{"r": 8, "lora_alpha": 16}',
    "adapter_model.safetensors": bytes(reversed(range(256))) * 8,
}


def layout(root: Path) -> dict[str, str]:
    """The repo folders' blobs, snapshot links and refs: what huggingface_hub finds files by."""
    found = {}
    for p in sorted(root.glob("models--*/*/**/*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            found[rel] = f"-> {os.readlink(p)}"
        elif p.is_file() and rel.split("/")[1] in ("blobs", "refs"):
            found[rel] = sha256(p.read_bytes())
    return found


def fetched(hub: FakeHub) -> list[str]:
    return [
        r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in hub.requests("GET", "/resolve/")
    ]


# --- a cache huggingface_hub made, read offline ------------------------------------------------


def test_snapshot_made_by_huggingface_hub_is_read_offline_without_a_write(
    hub: FakeHub, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = hub.add_repo("org/toy", MODEL)
    folder = snapshot_download("org/toy", cache_dir=cache, endpoint=hub.url)
    assert (cache / "models--org--toy" / "trees" / f"{commit}.json").is_file()  # its listing
    before = state(cache)
    hub.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    for spec in ("org/toy", "org/toy@main", f"org/toy@{commit}"):
        got = resolve_model(spec, role="base")
        assert (got.repo, got.commit, got.folder) == ("org/toy", commit, Path(folder))
        assert (got.missing, got.downloaded, got.nbytes) == ([], [], 0)
    assert got.revision == commit
    assert (got.folder / "model.safetensors").read_bytes() == MODEL["model.safetensors"]

    assert state(cache) == before
    assert hub.log == []


def test_files_fetched_one_by_one_like_from_pretrained_are_complete_too(
    hub: FakeHub, cache: Path, offline: None
) -> None:
    commit = hub.add_repo("org/toy", MODEL)
    for name in ("config.json", "model.safetensors"):  # no listing cached, no README
        hf_hub_download("org/toy", name, cache_dir=cache, endpoint=hub.url)
    before = state(cache)
    hub.log.clear()

    got = resolve_model("org/toy")

    assert (got.commit, got.missing) == (commit, [])
    assert state(cache) == before and hub.log == []


def test_missing_repo_offline_is_one_clear_error(hub: FakeHub, cache: Path, offline: None) -> None:
    hub.add_repo("org/toy", MODEL)
    with pytest.raises(HubError) as e:
        resolve_model("org/toy@v2", role="base", hub=hub.options())
    assert e.value.message == (
        f"org/toy is not in the Hugging Face cache (revision 'v2', {cache}), and HF_HUB_OFFLINE "
        "is set, so it cannot be downloaded"
    )
    assert e.value.hint == (
        "Unset HF_HUB_OFFLINE to fetch it into the cache, or pass a local folder instead."
    )
    assert hub.log == [] and not cache.exists()


def test_missing_file_offline_names_it(
    hub: FakeHub, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = hub.add_repo("org/toy", MODEL)
    hf_hub_download("org/toy", "config.json", cache_dir=cache, endpoint=hub.url)
    hub.log.clear()
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")  # huggingface_hub honours it too
    with pytest.raises(HubError) as e:
        resolve_model("org/toy", hub=hub.options())
    assert e.value.message == (
        f"the cached snapshot of org/toy@main (commit {commit[:8]}) lacks weight files "
        "(*.safetensors, *.bin or consolidated.*.pth), and HF_HUB_OFFLINE is set, so it cannot "
        "be downloaded"
    )
    assert hub.log == []


# --- fetching into the cache -------------------------------------------------------------------


def test_repo_missing_from_the_cache_is_fetched_as_huggingface_hub_lays_it_out(
    hub: FakeHub, cache: Path, tmp_path: Path
) -> None:
    commit = hub.add_repo("org/toy", MODEL)
    got = resolve_model("org/toy", hub=hub.options())

    read = sorted(set(MODEL) - {"README.md"})  # docs are not fetched
    assert got.downloaded == read and got.nbytes == sum(len(MODEL[n]) for n in read)
    assert sorted(fetched(hub)) == read
    assert [(f.path, f.size) for f in got.missing] == [(n, len(MODEL[n])) for n in read]
    # the same blobs, links and refs as huggingface_hub's own download of those files
    theirs = tmp_path / "theirs"
    snapshot_download("org/toy", cache_dir=theirs, endpoint=hub.url, allow_patterns=read)
    assert layout(cache) == layout(theirs)
    repo = cache / "models--org--toy"
    assert (
        os.readlink(repo / "snapshots" / commit / "model.safetensors")
        == f"../../blobs/{sha256(MODEL['model.safetensors'])}"
    )
    assert (
        os.readlink(repo / "snapshots" / commit / "config.json")
        == f"../../blobs/{git_sha1(MODEL['config.json'])}"
    )
    assert (repo / "refs" / "main").read_text() == commit
    assert sorted(p.name for p in (repo / "blobs").iterdir()) == sorted(
        sha256(MODEL[n]) if n.endswith(".safetensors") else git_sha1(MODEL[n]) for n in read
    )

    # found where huggingface_hub looks, with no request
    hub.log.clear()
    assert snapshot_download("org/toy", cache_dir=cache, local_files_only=True) == str(got.folder)
    assert try_to_load_from_cache("org/toy", "config.json", cache_dir=cache) == str(
        got.folder / "config.json"
    )
    assert hub.log == []


def test_transformers_loads_what_was_fetched_into_the_cache(
    hub: FakeHub, cache: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    model = build_model("llama", torch.float16)
    model.save_pretrained(tmp_path / "tiny")
    hub.add_repo("org/tiny", {p.name: p.read_bytes() for p in (tmp_path / "tiny").iterdir()})
    resolve_model("org/tiny", role="base", hub=hub.options())
    hub.log.clear()

    loaded = AutoModelForCausalLM.from_pretrained(
        "org/tiny", cache_dir=cache, local_files_only=True, dtype=torch.float16
    )

    want = model.state_dict()
    assert {n: t.tolist() for n, t in loaded.state_dict().items()} == {
        n: t.tolist() for n, t in want.items()
    }
    assert hub.log == []


def test_partly_cached_repo_fetches_only_what_it_lacks(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("org/toy", MODEL)
    hf_hub_download("org/toy", "config.json", cache_dir=cache, endpoint=hub.url)
    hub.log.clear()

    got = resolve_model("org/toy", hub=hub.options())

    assert sorted(fetched(hub)) == ["model.safetensors", "tokenizer.json"]
    assert got.downloaded == ["model.safetensors", "tokenizer.json"]
    hub.log.clear()
    assert resolve_model("org/toy", hub=hub.options()).downloaded == []  # complete: no request
    assert hub.log == []


def test_a_listing_huggingface_hub_cached_tells_what_is_missing(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("org/toy", MODEL)
    snapshot_download(
        "org/toy",
        cache_dir=cache,
        endpoint=hub.url,
        allow_patterns=["config.json", "*.safetensors"],
    )  # it lists tokenizer.json
    hub.log.clear()

    assert resolve_model("org/toy", hub=hub.options()).downloaded == ["tokenizer.json"]
    assert fetched(hub) == ["tokenizer.json"]


def test_new_commit_reuses_the_blobs_it_shares(hub: FakeHub, cache: Path) -> None:
    first = hub.add_repo("org/toy", MODEL)
    resolve_model("org/toy", hub=hub.options())
    second = hub.add_repo("org/toy", {**MODEL, "config.json": b'{"model_type": "llama2"}'})
    # the cached main lacks its weights now: the repo is listed again, at its new commit
    (cache / "models--org--toy" / "snapshots" / first / "model.safetensors").unlink()
    hub.log.clear()

    got = resolve_model("org/toy", hub=hub.options())

    assert (got.commit, got.downloaded, fetched(hub)) == (second, ["config.json"], ["config.json"])
    assert sorted(p.name for p in got.folder.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert (cache / "models--org--toy" / "refs" / "main").read_text() == second


def test_a_pinned_commit_is_fetched_without_a_ref(hub: FakeHub, cache: Path) -> None:
    first = hub.add_repo("org/toy", MODEL)
    hub.add_repo("org/toy", {**MODEL, "config.json": b'{"model_type": "llama2"}'})

    got = resolve_model(f"org/toy@{first}", hub=hub.options())

    assert (got.commit, got.revision) == (first, first)
    assert (got.folder / "config.json").read_bytes() == MODEL["config.json"]
    assert not (cache / "models--org--toy" / "refs").exists()
    hub.log.clear()
    assert resolve_model(f"org/toy@{first}").downloaded == [] and hub.log == []


def test_same_content_at_two_paths_is_one_blob_fetched_once(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("org/toy", {**MODEL, "tokenizer_copy.json": MODEL["tokenizer.json"]})
    got = resolve_model("org/toy", hub=hub.options())
    assert fetched(hub).count("tokenizer.json") + fetched(hub).count("tokenizer_copy.json") == 1
    assert (got.folder / "tokenizer_copy.json").read_bytes() == MODEL["tokenizer.json"]
    assert "tokenizer_copy.json" in got.downloaded and "tokenizer.json" in got.downloaded


def test_dry_run_lists_what_is_missing_and_writes_nothing(
    hub: FakeHub, cache: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = hub.add_repo("org/toy", MODEL)

    class Usage:
        free = 5_000_000_000

    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage())
    got = resolve_model("org/toy", hub=hub.options(), dry_run=True)
    assert [(f.path, f.size) for f in got.missing] == [
        ("config.json", 23),
        ("model.safetensors", 3072),
        ("tokenizer.json", 18),
    ]
    assert got.downloaded == [] and got.commit == commit
    assert not cache.exists() and fetched(hub) == []
    assert capfd.readouterr() == ("", "")  # what it would download is a note, not a print
    assert got.notes == [
        f"org/toy@{commit[:8]} (dry run): 3 of 3 files to fetch, 3.11 kB to "
        f"download into {cache / 'models--org--toy'} (disk free: 5.00 GB). "
        "Nothing was downloaded."
    ]
    assert got.summary() == got.notes[0]
    doc = json.loads(json.dumps(got.to_dict()))
    assert doc == {
        "repo": "org/toy",
        "revision": "main",
        "commit": commit,
        "folder": str(cache / "models--org--toy" / "snapshots" / commit),
        "release": None,
        "manifest": None,
        "dry_run": True,
        "downloaded": [],
        "bytes": 0,
        "missing": [
            {"path": "config.json", "size": 23},
            {"path": "model.safetensors", "size": 3072},
            {"path": "tokenizer.json", "size": 18},
        ],
        "notes": got.notes,
    }


def test_what_was_fetched_or_found_is_a_note_and_nothing_is_printed(
    hub: FakeHub, cache: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    commit = hub.add_repo("org/toy", MODEL)
    fetched_now = resolve_model("org/toy", hub=hub.options())
    found = resolve_model("org/toy", hub=hub.options())
    assert capfd.readouterr() == ("", "")

    repo = cache / "models--org--toy"
    assert [re.sub(r"in \d+\.\d s", "in T", n) for n in fetched_now.notes] == [
        f"org/toy@{commit[:8]}: 3 files downloaded (3.11 kB in T), 0 already there, into the "
        f"Hugging Face cache {repo}"
    ]
    assert found.notes == [
        f"org/toy@main: complete in the Hugging Face cache, read from {repo / 'snapshots' / commit}"
    ]
    assert json.loads(json.dumps(fetched_now.to_dict()))["downloaded"] == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert fetched_now.to_dict()["bytes"] == 23 + 3072 + 18


def test_killed_download_into_the_cache_resumes_with_a_range_request(
    hub: FakeHub, cache: Path, tmp_path: Path
) -> None:
    data = os.urandom(256 * 1024)
    hub.add_repo("org/slow", {"config.json": b"{}", "model.safetensors": data})
    hub.slow = (1024, 0.02)  # ~5 s for the whole file
    part = cache / "models--org--slow" / "blobs" / f"{sha256(data)}.part"
    code = (
        "from weightkit.hub.cache import resolve_model; "
        "from weightkit.options import HubOptions; "
        f"resolve_model('org/slow', hub=HubOptions(endpoint={hub.url!r}))"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1"}
    kept = kill_once_grown([sys.executable, "-c", code], env, part)
    assert 32 * 1024 <= kept < len(data)
    assert not (cache / "models--org--slow" / "refs").exists()  # written once complete

    hub.slow = None
    got = resolve_model("org/slow", hub=hub.options())

    last = hub.requests("GET", "/resolve/")[-1]
    assert (
        last.path.endswith("/model.safetensors") and last.headers.get("Range") == f"bytes={kept}-"
    )
    assert hashlib.sha256((got.folder / "model.safetensors").read_bytes()).hexdigest() == sha256(
        data
    )
    assert not part.exists()


def test_corrupted_download_is_not_kept_in_the_cache(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("org/toy", MODEL)
    hub.corrupt["model.safetensors"] = 100
    with pytest.raises(Exception, match="model.safetensors has sha256 "):
        resolve_model("org/toy", hub=hub.options())
    blobs = cache / "models--org--toy" / "blobs"
    assert sha256(MODEL["model.safetensors"]) not in {p.name for p in blobs.iterdir()}
    assert not (cache / "models--org--toy" / "refs").exists()


def test_hostile_names_are_refused_before_any_download(hub: FakeHub, cache: Path) -> None:
    hub.add_repo("org/hostile", {**MODEL, "../../evil.json": b"{}"})
    with pytest.raises(HubError, match=r"lists a file named '../../evil.json', which is not a"):
        resolve_model("org/hostile", hub=hub.options())
    assert fetched(hub) == [] and not cache.exists()


def test_unwritable_cache_is_one_clear_error(
    hub: FakeHub, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/toy", MODEL)

    def refused(src: str, dst: Path) -> None:  # what a read-only cache answers (tests run as root)
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(cache_mod.os, "symlink", refused)
    with pytest.raises(OutputError) as e:
        resolve_model("org/toy", hub=hub.options())
    snapshot = cache / "models--org--toy" / "snapshots" / hub.repos["org/toy"].branches["main"]
    assert e.value.message.startswith(
        f"cannot write to the Hugging Face cache {cache}: Permission denied ({snapshot}/"
    )
    assert e.value.hint == ("Check its permissions, or set HF_HUB_CACHE to a folder you can write.")


def test_not_a_model_is_refused_before_any_download(hub: FakeHub, cache: Path) -> None:
    commit = hub.add_repo("org/docs", {"README.md": b"# nothing\n"})
    with pytest.raises(InputError) as e:
        resolve_model("org/docs", role="diff", hub=hub.options())
    assert e.value.message == (
        f"org/docs@{commit[:8]} is not a model: it has no config.json "
        "and no weight files (*.safetensors, *.bin or consolidated.*.pth)"
    )
    assert fetched(hub) == []


def test_index_naming_a_shard_the_repo_lacks(hub: FakeHub, cache: Path) -> None:
    index = (
        b'{"weight_map": {"a": "model-00001-of-00002.safetensors", '
        b'"b": "model-00002-of-00002.safetensors"}}'
    )
    commit = hub.add_repo(
        "org/broken",
        {
            "config.json": b"{}",
            "model.safetensors.index.json": index,
            "model-00001-of-00002.safetensors": b"x" * 2000,
        },
    )
    with pytest.raises(HubError) as e:
        resolve_model("org/broken", hub=hub.options())
    assert e.value.message == (
        f"org/broken@{commit[:8]} is incomplete on {hub.url}: it lacks "
        "model-00002-of-00002.safetensors (named in model.safetensors.index.json)"
    )


# --- what is fetched for each role -------------------------------------------------------------


def files(*names: str) -> list[RemoteFile]:
    return [RemoteFile(n, 1) for n in names]


def test_one_weight_layout_is_fetched_and_the_adapter_only_as_lora() -> None:
    repo = files(
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "flax_model.msgpack",
        "tf_model.h5",
        "tokenizer.json",
        "adapter_config.json",
        "adapter_model.safetensors",
        "original/consolidated.00.pth",
        "original/params.json",
    )
    assert [f.path for f in select_files(repo, "base")] == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "original/params.json",
    ]
    docs = files(".gitattributes", "README.md", "LICENSE.txt", "assets/logo.png")
    assert select_files(docs + repo, "base") == select_files(repo, "base")
    assert [f.path for f in select_files(repo, "lora")] == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    sharded = files(
        "config.json",
        "pytorch_model.bin.index.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "model.safetensors.index.json",
        "model-00001-of-00001.safetensors",
        "training_args.bin",
    )
    assert [f.path for f in select_files(sharded, "diff")] == [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00001.safetensors",
    ]
    raw = files("params.json", "consolidated.00.pth", "consolidated.01.pth", "tokenizer.model")
    assert [f.path for f in select_files(raw, "raw")] == [f.path for f in raw]


@pytest.mark.parametrize(
    ("present", "role", "lacking"),
    [
        ({"config.json", "model.safetensors"}, "base", []),
        ({"params.json", "consolidated.00.pth"}, "raw", []),
        ({"model.safetensors"}, "base", ["config.json"]),
        (
            {"config.json", "model-00001-of-00003.safetensors", "model-00003-of-00003.safetensors"},
            "diff",
            ["model-00002-of-00003.safetensors"],
        ),
        (
            {"config.json", "adapter_model.safetensors", "adapter_config.json"},
            "base",
            ["weight files (*.safetensors, *.bin or consolidated.*.pth)"],
        ),
        ({"adapter_config.json", "adapter_model.bin"}, "lora", []),
        ({"adapter_model.bin"}, "lora", ["adapter_config.json"]),
        (
            {"adapter_config.json", "config.json", "model.safetensors"},
            "lora",
            ["adapter_model.safetensors (or .bin)"],
        ),
    ],
)
def test_the_completeness_rule(present: set[str], role: str, lacking: list[str]) -> None:
    assert _lacks(present, role, shards_of=None) == lacking


def test_index_shards_and_dangling_links_count(hub: FakeHub, cache: Path) -> None:
    index = (
        b'{"weight_map": {"a": "model-00001-of-00002.safetensors", '
        b'"b": "model-00002-of-00002.safetensors"}}'
    )
    shards = {
        "model-00001-of-00002.safetensors": b"1" * 2000,
        "model-00002-of-00002.safetensors": b"2" * 2000,
    }
    commit = hub.add_repo(
        "org/sharded", {"config.json": b"{}", "model.safetensors.index.json": index, **shards}
    )
    resolve_model("org/sharded", hub=hub.options())
    store = RepoCache.of("org/sharded")
    assert cache_mod.lacks(store, commit, "base") == []
    store.blob(sha256(shards["model-00002-of-00002.safetensors"])).unlink()
    assert cache_mod.lacks(store, commit, "base") == [
        "model-00002-of-00002.safetensors (its blob is gone)",
        "model-00002-of-00002.safetensors (named in model.safetensors.index.json)",
    ]
    hub.log.clear()
    resolve_model("org/sharded", hub=hub.options())  # fetched again
    assert fetched(hub) == ["model-00002-of-00002.safetensors"]


# --- release names -----------------------------------------------------------------------------


def test_release_name_as_diff_and_lora_resolves_to_its_repos(hub: FakeHub, cache: Path) -> None:
    # the shipped catalog: zhixi-13b's diff and LoRA repos, hosted here as toy repos
    hub.add_repo("zjunlp/zhixi-13b-diff", MODEL)
    hub.add_repo("zjunlp/zhixi-13b-lora", {**LORA, "README.md": b"# lora\n"})
    checksums = Path(__file__).resolve().parents[2] / "checksums"

    diff = resolve_model("zhixi-13b", role="diff", hub=hub.options())
    lora = resolve_model("zhixi-13b", role="lora", hub=hub.options())

    assert (diff.repo, diff.release, diff.manifest) == (
        "zjunlp/zhixi-13b-diff",
        "zhixi-13b",
        checksums / "zhixi-13b-diff.md5",
    )
    assert (lora.repo, lora.manifest) == ("zjunlp/zhixi-13b-lora", checksums / "zhixi-13b-lora.md5")
    assert lora.downloaded == sorted(LORA)
    assert (lora.folder / "adapter_config.json").read_bytes() == LORA["adapter_config.json"]
    with pytest.raises(HubError, match="zjunlp/zhixi-13b-diff-fp16 was not found"):
        resolve_model("zhixi-13b", role="diff", fp16=True, hub=hub.options())


@pytest.mark.parametrize("role", ["raw", "base"])
def test_release_name_as_a_base_model_says_what_to_pass(
    hub: FakeHub, cache: Path, role: str
) -> None:
    with pytest.raises(InputError) as e:
        resolve_model("zhixi-13b", role=role, hub=hub.options())
    assert e.value.message == (
        f"release zhixi-13b publishes no base model to pass as `{role}`; its base model is "
        "LLaMA-13B in HF format (not on the Hub; get it from Meta and run weightkit convert)"
    )
    assert e.value.hint == (
        f"Pass the base model as `{role}` (an HF folder, a raw Meta folder "
        "or a Hub id), and the release as `diff` or `lora`."
    )
    assert hub.log == []


def test_release_part_not_on_the_hub(hub: FakeHub, cache: Path) -> None:
    with pytest.raises(InputError, match="part 'recovered' of release zhixi-13b is not on the"):
        resolve_model("zhixi-13b", role="tuned", hub=hub.options())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("org/name", True),
        ("org/name@v1.0", True),
        ("org/name@refs/pr/1", True),
        ("huggyllama/llama-7b", True),
        ("zhixi-13b", True),
        ("name", False),
        ("a/b/c", False),
        ("./x/y", False),
        ("org/name@", False),
        ("org/name@../../x", False),
        ("org/na--me", False),
        ("/abs/path", False),
        ("", False),
        ("zhixi-13b@main", False),
    ],
)
def test_is_hub_spec(spec: str, expected: bool) -> None:
    assert is_hub_spec(spec) is expected


def test_not_a_spec_at_all(cache: Path) -> None:
    with pytest.raises(InputError) as e:
        resolve_model("no-such-thing")
    assert e.value.message == (
        "'no-such-thing' is no file or folder, no Hub repo id "
        "(org/name[@revision]) and no release in the catalog"
    )


def test_cache_root_follows_huggingface_hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", "~/hf")
    assert cache_root() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "old"))
    assert cache_root() == tmp_path / "old"
    monkeypatch.setenv("HF_HUB_CACHE", "$HOME/new")
    assert cache_root() == tmp_path / "new"
