"""Hub repo ids as the model inputs of recover, merge-lora and diff (issue 15), through the real
weightkit.hub.cache: read from a cache that huggingface_hub laid out from the local fake Hub
(conftest.py), offline, without a request and without a write; fetched into the cache when it
lacks them, then read; one message naming the repo when it is missing offline; and a dry run that
says what it would download."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import World, file_bytes, run_role
from huggingface_hub import snapshot_download, try_to_load_from_cache

from weightkit.cli import _run
from weightkit.hub.client import HubError
from weightkit.progress import human_bytes
from weightkit.sources.open import open_source

from .conftest import FakeHub, state


def publish(hub: FakeHub, repo: str, folder: Path, *extra: Path) -> str:
    """Put `folder`'s files (and `extra` files, at the top) on the fake Hub as `repo`; returns the
    commit."""
    files = {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    files.update({p.name: p.read_bytes() for p in extra})
    return hub.add_repo(repo, files)


def cached(hub: FakeHub, cache: Path, repo: str, folder: Path, *extra: Path) -> Path:
    """`folder` published as `repo` and fetched into `cache` by huggingface_hub itself, as
    `from_pretrained` fetches it; returns the snapshot folder."""
    publish(hub, repo, folder, *extra)
    return Path(snapshot_download(repo, cache_dir=cache, endpoint=hub.url))


# (role, what the Hub repo holds) -> the world's folder it is published from
HUB_KINDS = {
    ("raw", "hf"): "converted",
    ("raw", "raw Meta"): "meta",
    ("diff", "hf"): "diff",
    ("tuned", "hf"): "tuned",
    ("base", "hf"): "converted",
    ("base", "raw Meta"): "meta",
    ("lora", "hf"): "base_adapter",
}


def publish_kind(hub: FakeHub, cache: Path, world: World, kind: str, stands_for: str) -> None:
    if kind == "raw Meta":  # Meta's files, its tokenizer.model in the repo (not one folder up)
        cached(hub, cache, "org/model", world.meta.folder, world.meta.tokenizer)
    else:
        cached(hub, cache, "org/model", getattr(world, stands_for))


@pytest.mark.parametrize(("role", "kind"), HUB_KINDS)
def test_a_hub_id_in_every_role_is_read_from_the_cache_offline_as_it_lies(
    world: World,
    hub: FakeHub,
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    role: str,
    kind: str,
) -> None:
    stands_for = HUB_KINDS[role, kind]
    publish_kind(hub, cache, world, kind, stands_for)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = state(cache)
    hub.log.clear()
    run_role(
        world,
        role,
        getattr(world, "converted" if stands_for == "meta" else stands_for),
        tmp_path / "want",
    )
    run_role(world, role, "org/model", tmp_path / "got")
    assert file_bytes(tmp_path / "got") == file_bytes(tmp_path / "want")
    assert state(cache) == before and hub.log == []


def test_recover_and_merge_lora_read_a_cached_hub_id_offline(
    world: World,
    hub: FakeHub,
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """`recover --raw org/name --diff DIR` and `merge-lora --base org/name`, on the command line,
    byte for byte as with the folder; no request, the cache unchanged."""
    snapshot = cached(hub, cache, "org/llama", world.converted)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = state(cache)
    hub.log.clear()
    for command, flag, rest in (
        ("recover", "--raw", ["--diff", str(world.diff)]),
        ("merge-lora", "--base", ["--lora", str(world.base_adapter)]),
    ):
        want, got = tmp_path / f"{command}-want", tmp_path / f"{command}-got"
        assert (
            _run([command, flag, str(world.converted), *rest, "--out", str(want)], debug=False) == 0
        )
        capsys.readouterr()
        assert _run([command, flag, "org/llama", *rest, "--out", str(got)], debug=False) == 0
        err = " ".join(capsys.readouterr().err.split())
        # the command's result says it, ahead of the summary
        assert (
            f"org/llama@main: complete in the Hugging Face cache, read from {snapshot} "
            f"{command}: wrote 21 tensors" in err
        )
        assert file_bytes(got) == file_bytes(want)
    assert state(cache) == before and hub.log == []


def test_a_repo_missing_from_the_cache_is_downloaded_into_it_then_used(
    world: World,
    hub: FakeHub,
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    commit = publish(hub, "org/llama", world.converted)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    run_role(world, "raw", world.converted, tmp_path / "want")
    args = ["recover", "--raw", "org/llama", "--diff", str(world.diff), "--out"]
    assert _run([*args, str(tmp_path / "got")], debug=False) == 0
    err = " ".join(capsys.readouterr().err.split())
    weights = sorted(p.name for p in world.converted.iterdir())
    assert re.search(
        rf"org/llama@{commit[:8]}: {len(weights)} files downloaded \(.+\), 0 already "
        rf"there, into the Hugging Face cache {cache / 'models--org--llama'} ",
        err,
    )
    assert file_bytes(tmp_path / "got") == file_bytes(tmp_path / "want")
    # where huggingface_hub (and so transformers) finds it
    snapshot = cache / "models--org--llama" / "snapshots" / commit
    assert (cache / "models--org--llama" / "refs" / "main").read_text() == commit
    for name in weights:
        assert try_to_load_from_cache("org/llama", name, cache_dir=cache) == str(snapshot / name)
    # and the next run reads it where it lies: no request, no write
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = state(cache)
    hub.log.clear()
    assert _run([*args, str(tmp_path / "again")], debug=False) == 0
    assert file_bytes(tmp_path / "again") == file_bytes(tmp_path / "want")
    assert state(cache) == before and hub.log == []


def test_a_missing_repo_offline_is_one_clear_error_naming_it(
    world: World,
    hub: FakeHub,
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    publish(hub, "org/llama", world.converted)  # on the Hub, not in the cache
    out = tmp_path / "out"
    assert (
        _run(
            [
                "merge-lora",
                "--base",
                "org/llama",
                "--lora",
                str(world.base_adapter),
                "--out",
                str(out),
            ],
            debug=False,
        )
        == 1
    )
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "",
        (
            f"Error: org/llama is not in the Hugging Face cache (revision 'main', {cache}), and "
            "HF_HUB_OFFLINE is set, so it cannot be downloaded\n"
            "Unset HF_HUB_OFFLINE to fetch it into the cache, or pass a local folder instead.\n"
        ),
    )
    assert hub.log == [] and not cache.exists() and not out.exists()


def test_a_dry_run_says_what_it_would_download_and_fetches_nothing(
    world: World,
    hub: FakeHub,
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """Without the files nothing can be checked: the dry run reports the download it would make,
    then says so in one message; nothing goes into the cache or the output."""
    commit = publish(hub, "org/llama", world.converted)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    out = tmp_path / "out"
    assert (
        _run(
            [
                "recover",
                "--raw",
                "org/llama",
                "--diff",
                str(world.diff),
                "--out",
                str(out),
                "--dry-run",
            ],
            debug=False,
        )
        == 1
    )
    err = " ".join(capsys.readouterr().err.split())
    n = len(list(world.converted.iterdir()))
    size = sum(p.stat().st_size for p in world.converted.iterdir())
    assert re.search(
        rf"org/llama@{commit[:8]} \(dry run\): {n} of {n} files to fetch, "
        rf"{human_bytes(size)} to download into {cache / 'models--org--llama'} \(disk "
        r"free: "
        r"[^)]+\)\. Nothing was downloaded\. Error: org/llama: "
        rf"{n} file\(s\) of org/llama are not in the Hugging Face cache yet \(",
        err,
    )
    assert err.endswith(
        "a dry run does not download them, so the inputs cannot be checked Run "
        "the command without --dry-run: it downloads them into the cache first."
    )
    assert hub.requests("GET", "/resolve/") == [] and not cache.exists() and not out.exists()


def test_a_dry_run_with_the_repo_in_the_cache_checks_everything_offline(
    world: World,
    hub: FakeHub,
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    cached(hub, cache, "org/llama", world.converted)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = state(cache)
    hub.log.clear()
    out = tmp_path / "out"
    assert (
        _run(
            [
                "--quiet",
                "merge-lora",
                "--base",
                "org/llama",
                "--lora",
                str(world.base_adapter),
                "--out",
                str(out),
                "--dry-run",
            ],
            debug=False,
        )
        == 0
    )
    assert (
        _run(
            [
                "merge-lora",
                "--base",
                "org/llama",
                "--lora",
                str(world.base_adapter),
                "--out",
                str(out),
                "--dry-run",
            ],
            debug=False,
        )
        == 0
    )
    err = " ".join(capsys.readouterr().err.split())
    assert "merge-lora (dry run): inputs check out; " in err
    assert err.endswith("Nothing was written.")
    assert state(cache) == before and hub.log == [] and not out.exists()


def test_a_local_folder_named_like_a_hub_id_is_read_as_the_folder(
    world: World, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path that exists wins: the cache is not looked at (it is empty, and offline)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "llama").symlink_to(world.converted)
    monkeypatch.chdir(tmp_path)
    assert (
        open_source("org/llama", role="base").names()
        == open_source(world.converted, role="base").names()
    )
    with pytest.raises(HubError) as e:  # and an id that is no path is looked up there
        open_source("org/other", role="base")
    assert str(e.value).startswith("org/other is not in the Hugging Face cache")
    assert not cache.exists()
