"""`weightkit verify org/name`: the audit of a repo's snapshot in the Hugging Face cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download

from weightkit.cli import main
from weightkit.errors import InputError
from weightkit.hub.cache import resolve_model
from weightkit.hub.client import HubError
from weightkit.ops.verify import verify

from .conftest import FakeHub, git_sha1, sha256
from .test_cache import MODEL, fetched, state

FILES = {n: d for n, d in MODEL.items() if n != "README.md"}  # what weightkit fetches of it
WEIGHTS = sha256(MODEL["model.safetensors"])
CONFIG = git_sha1(MODEL["config.json"])


@pytest.fixture
def cached(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """org/toy fetched into HF_HUB_CACHE by weightkit; returns the repo's cache folder."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    hub.add_repo("org/toy", MODEL)
    resolve_model("org/toy", hub=hub.options())
    hub.log.clear()
    return tmp_path / "hf-cache" / "models--org--toy"


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, " ".join(err.split())


def test_intact_cache_passes_without_a_request_or_a_write(
    hub: FakeHub, cached: Path, capsys: pytest.CaptureFixture
) -> None:
    before = state(cached)
    report = verify("org/toy", progress=False)
    assert report.ok and report.kind == "cache"
    commit = hub.repos["org/toy"].branches["main"]
    assert report.path == cached / "snapshots" / commit
    assert [(r.name, r.expected, r.actual, r.verdict) for r in report.rows] == [
        (
            n,
            sha256(d) if n.endswith(".safetensors") else git_sha1(d),
            sha256(d) if n.endswith(".safetensors") else git_sha1(d),
            "ok",
        )
        for n, d in sorted(FILES.items())
    ]
    assert report.bytes_hashed == sum(map(len, FILES.values()))
    assert state(cached) == before and hub.log == []

    rc, out, err = cli(capsys, "verify", "org/toy")
    assert rc == 0
    assert "3 ok, 0 MISMATCH, 0 missing, 0 extra: the blobs of " in err
    assert f"checked against their names in {cached / 'blobs'} (sha256/git-sha1)" in err


def test_a_changed_blob_is_named_and_fix_makes_the_next_run_fetch_it(
    hub: FakeHub, cached: Path, capsys: pytest.CaptureFixture
) -> None:
    flip_byte(cached / "blobs" / WEIGHTS, 100)  # same size, other bytes
    got = hashlib.sha256((cached / "blobs" / WEIGHTS).read_bytes()).hexdigest()

    rc, out, err = cli(capsys, "verify", "org/toy")
    assert rc == 1
    assert out.split()[:5] == ["file", "expected", "actual", "verdict", "note"]
    assert (
        f"model.safetensors {WEIGHTS} {got} MISMATCH 3072 bytes, not the ones its name is "
        "the hash of" in " ".join(out.split())
    )
    assert "1 ok" not in err and "2 ok, 1 MISMATCH, 0 missing, 0 extra" in err
    assert "run the same command with --fix to remove them" in err
    assert (cached / "blobs" / WEIGHTS).exists()  # nothing removed without --fix

    rc, out, err = cli(capsys, "verify", "org/toy", "--fix")
    commit = hub.repos["org/toy"].branches["main"]
    assert rc == 1  # it was damaged
    assert (
        f"FAILED: removed blobs/{WEIGHTS}, snapshots/{commit}/model.safetensors; the next "
        "run that reads the repo downloads them again."
    ) in err
    assert not (cached / "blobs" / WEIGHTS).exists()
    assert not (cached / "snapshots" / commit / "model.safetensors").is_symlink()

    again = resolve_model("org/toy", hub=hub.options())
    assert fetched(hub) == ["model.safetensors"] and again.downloaded == ["model.safetensors"]
    assert cli(capsys, "verify", "org/toy")[0] == 0


def test_a_changed_small_file_is_caught_by_its_git_sha1(hub: FakeHub, cached: Path) -> None:
    flip_byte(cached / "blobs" / CONFIG, 3)
    report = verify("org/toy", progress=False)
    row = next(r for r in report.rows if r.name == "config.json")
    assert (row.expected, row.verdict) == (CONFIG, "MISMATCH")
    data = (cached / "blobs" / CONFIG).read_bytes()
    assert row.actual == git_sha1(data)


def test_truncated_blob_says_so_where_the_listing_gives_the_size(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/toy", MODEL)
    snapshot_download("org/toy", cache_dir=tmp_path / "c", endpoint=hub.url)  # with its listing
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    blob = tmp_path / "c" / "models--org--toy" / "blobs" / WEIGHTS
    blob.write_bytes(MODEL["model.safetensors"][:1000])

    report = verify("org/toy", progress=False, jobs=2)

    row = next(r for r in report.rows if r.name == "model.safetensors")
    assert (row.verdict, row.note) == ("MISMATCH", "truncated: 1000 of 3072 bytes")


def test_dangling_link_is_missing_and_fix_removes_it(hub: FakeHub, cached: Path) -> None:
    (cached / "blobs" / CONFIG).unlink()
    commit = hub.repos["org/toy"].branches["main"]

    report = verify("org/toy", progress=False)
    row = next(r for r in report.rows if r.name == "config.json")
    assert (row.verdict, row.note) == ("missing", f"a dangling link: blobs/{CONFIG} is gone")
    assert not report.ok

    fixed = verify("org/toy", progress=False, fix=True)
    assert fixed.removed == [f"snapshots/{commit}/config.json"]
    assert not (cached / "snapshots" / commit / "config.json").is_symlink()
    resolve_model("org/toy", hub=hub.options())
    assert fetched(hub) == ["config.json"]


def test_json_report_lists_what_was_removed(
    hub: FakeHub, cached: Path, capsys: pytest.CaptureFixture
) -> None:
    flip_byte(cached / "blobs" / WEIGHTS, 0)
    rc, out, _ = cli(capsys, "verify", "org/toy", "--fix", "--json", "--quiet")
    doc = json.loads(out)
    commit = hub.repos["org/toy"].branches["main"]
    assert (rc, doc["kind"], doc["ok"], doc["counts"]) == (
        1,
        "cache",
        False,
        {"ok": 2, "MISMATCH": 1, "missing": 0, "extra": 0},
    )
    assert doc["removed"] == [f"blobs/{WEIGHTS}", f"snapshots/{commit}/model.safetensors"]


def test_a_cached_snapshot_checks_against_a_manifest_too(
    hub: FakeHub, cached: Path, tmp_path: Path
) -> None:
    sums = tmp_path / "toy.md5"
    sums.write_text("".join(f"{hashlib.md5(d).hexdigest()}  {n}\n" for n, d in FILES.items()))
    report = verify("org/toy@main", manifest=sums, progress=False)
    assert report.kind == "files" and report.ok
    assert [r.name for r in report.rows] == list(FILES)


def test_a_repo_not_in_the_cache_is_not_downloaded(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    hub.add_repo("org/toy", MODEL)
    with pytest.raises(HubError) as e:
        verify("org/toy", progress=False)
    assert e.value.message == (
        f"org/toy@main is not in the Hugging Face cache "
        f"{tmp_path / 'empty'}: there is nothing to check"
    )
    assert hub.log == []


def test_a_folder_of_that_name_is_verified_as_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "org" / "toy"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"a")
    (folder / "checksums.md5").write_text(f"{hashlib.md5(b'a').hexdigest()}  a.txt\n")
    monkeypatch.chdir(tmp_path)
    report = verify("org/toy", progress=False)
    assert (report.kind, report.ok) == ("files", True)
    with pytest.raises(InputError, match="org/toy: `fix` repairs a Hub repo's files in the"):
        verify("org/toy", progress=False, fix=True)
