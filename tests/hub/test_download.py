"""`weightkit download` against the local fake Hub in conftest.py."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import weightkit.hub.download as dl
from weightkit.cli import main
from weightkit.errors import ChecksumError, InputError, OutputError
from weightkit.hub.client import PARTIAL_DIR, HubError, RemoteFile
from weightkit.hub.download import download
from weightkit.progress import human_time

from .conftest import TOKEN, FakeHub, kill_once_grown

# one LoRA repo layout: two adapter files, three base files; *.safetensors are LFS (>= 1 KiB)
FILES = {
    "adapter_config.json": b'{"r": 8, "lora_alpha": 16}',
    "adapter_model.safetensors": bytes(range(256)) * 8,
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": bytes(reversed(range(256))) * 12,
    "README.md": b"# toy\n",
}


LORA = ("adapter_config.json", "adapter_model.safetensors")


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def fetched(hub: FakeHub) -> list[str]:
    """Files the server sent, in request order (GETs on /resolve/)."""
    return [
        r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in hub.requests("GET", "/resolve/")
    ]


def test_only_lora_fetches_exactly_the_adapter_files(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("org/toy", FILES)
    result = download("org/toy", tmp_path / "out", only_lora=True, hub=hub.options())

    assert listing(tmp_path / "out") == ["adapter_config.json", "adapter_model.safetensors"]
    assert sorted(fetched(hub)) == ["adapter_config.json", "adapter_model.safetensors"]
    assert result.downloaded == ["adapter_config.json", "adapter_model.safetensors"]
    assert result.nbytes == len(FILES["adapter_config.json"]) + 2048
    for name in result.downloaded:
        assert (tmp_path / "out" / name).read_bytes() == FILES[name]


class Usage:  # what shutil.disk_usage answers, for a disk with `free` bytes free
    def __init__(self, free: int) -> None:
        self.free = free


def test_dry_run_reports_and_fetches_nothing(
    hub: FakeHub, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = hub.add_repo("org/toy", FILES)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(5_000_000_000))
    result = download("org/toy", tmp_path / "out", only_lora=True, hub=hub.options(), dry_run=True)
    assert result.downloaded == [] and not (tmp_path / "out").exists()
    assert fetched(hub) == []
    assert capfd.readouterr() == ("", "")  # a Python call prints nothing
    assert len(FILES["adapter_config.json"]) + 2048 == 2074
    assert result.summary() == (
        f"org/toy@{commit[:8]} (dry run): 2 of 2 files to fetch, 2.07 kB to download into "
        f"{tmp_path / 'out'} (disk free: 5.00 GB). Nothing was downloaded."
    )
    assert json.loads(json.dumps(result.to_dict())) == {
        "repo": "org/toy",
        "revision": "main",
        "commit": commit,
        "out": str(tmp_path / "out"),
        "dry_run": True,
        "files": list(LORA),
        "to_download": list(LORA),
        "bytes_to_download": 2074,
        "disk_free": 5_000_000_000,
        "notes": [],
    }


def test_a_download_prints_nothing_and_its_result_says_what_it_did(
    hub: FakeHub, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    commit = hub.add_repo("org/toy", FILES)
    out = tmp_path / "out"
    first = download("org/toy", out, include=["*.json"], hub=hub.options())
    again = download("org/toy", out, hub=hub.options())
    assert capfd.readouterr() == ("", "")

    assert first.summary() == (
        f"org/toy@{commit[:8]}: 2 files downloaded (49 B in "
        f"{human_time(first.seconds)}), 0 already there, into {out}"
    )
    doc = json.loads(json.dumps(again.to_dict()))
    assert doc == {
        "repo": "org/toy",
        "revision": "main",
        "commit": commit,
        "out": str(out),
        "dry_run": False,
        "files": sorted(FILES),
        "downloaded": ["README.md", "adapter_model.safetensors", "model.safetensors"],
        "present": ["adapter_config.json", "config.json"],
        "bytes": 6 + 2048 + 3072,
        "seconds": round(again.seconds, 3),
        "checked": {"manifest": None, "verify": None},
        "notes": [],
    }


@pytest.mark.parametrize("out", ["file", "file/out"])
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real-run"])
def test_out_that_is_or_lies_inside_a_file_is_refused(
    hub: FakeHub, tmp_path: Path, out: str, dry_run: bool
) -> None:
    hub.add_repo("org/toy", FILES)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputError) as e:
        download("org/toy", tmp_path / out, hub=hub.options(), dry_run=dry_run)
    assert (e.value.message, e.value.hint) == (
        f"cannot make the folder {tmp_path / out}: {tmp_path / 'file'} is a file",
        "Choose an `out` that is a folder or can become one.",
    )
    assert fetched(hub) == []
    assert (tmp_path / "file").read_text() == "not a folder"


def test_only_base_fetches_everything_but_the_adapter(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("org/toy", FILES)
    download("org/toy", tmp_path / "out", only_base=True, hub=hub.options())
    assert listing(tmp_path / "out") == ["README.md", "config.json", "model.safetensors"]


def test_include_and_exclude_filter(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("org/toy", FILES)
    download("org/toy", tmp_path / "a", include=["*.json"], hub=hub.options())
    download(
        "org/toy",
        tmp_path / "b",
        include=["*.json", "*.md"],
        exclude=["adapter_*"],
        hub=hub.options(),
    )
    assert listing(tmp_path / "a") == ["adapter_config.json", "config.json"]
    assert listing(tmp_path / "b") == ["README.md", "config.json"]


def test_nothing_selected_is_an_error(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("org/toy", FILES)
    with pytest.raises(InputError, match=r"no file of org/toy matches the selection"):
        download("org/toy", tmp_path / "out", include=["*.bin"], hub=hub.options())


def test_dropped_connection_twice_still_gives_the_right_file(hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(5000)
    hub.add_repo("org/big", {"big.bin": data})
    hub.drops["big.bin"] = [1200, 3000]

    result = download("org/big", tmp_path / "out", hub=hub.options())

    assert (tmp_path / "out" / "big.bin").read_bytes() == data
    ranges = [r.headers.get("Range") for r in hub.requests("GET", "/resolve/")]
    assert ranges == [None, "bytes=1200-", "bytes=3000-"]
    assert result.nbytes == 5000
    assert not (tmp_path / "out" / PARTIAL_DIR).exists()


def test_server_ignoring_range_gives_the_whole_file_again(hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(5000)
    hub.add_repo("org/big", {"big.bin": data})
    hub.drops["big.bin"] = [1200]
    hub.ignore_range.add("big.bin")

    download("org/big", tmp_path / "out", hub=hub.options())

    assert (tmp_path / "out" / "big.bin").read_bytes() == data
    ranges = [r.headers.get("Range") for r in hub.requests("GET", "/resolve/")]
    assert ranges == [None, "bytes=1200-"]


def test_busy_server_is_retried(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("org/toy", FILES)
    hub.statuses["config.json"] = [503, 429]
    download("org/toy", tmp_path / "out", include=["config.json"], hub=hub.options())
    assert (tmp_path / "out" / "config.json").read_bytes() == FILES["config.json"]
    assert fetched(hub) == ["config.json"] * 3


def test_file_gone_from_the_repo(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/toy", FILES)
    real = dl.list_files

    def with_a_ghost(*args: object) -> tuple[str, list[RemoteFile]]:
        commit, files = real(*args)
        return commit, [*files, RemoteFile("ghost.bin", 10, sha256="0" * 64)]

    monkeypatch.setattr(dl, "list_files", with_a_ghost)
    with pytest.raises(HubError) as e:
        download("org/toy", tmp_path / "out", include=["ghost.bin"], hub=hub.options())
    commit = hub.repos["org/toy"].branches["main"]
    assert e.value.message == (
        f"ghost.bin is listed in org/toy but could not be fetched from {commit}: it is not there"
    )


def test_gives_up_after_repeated_drops_and_keeps_the_bytes(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/big", {"big.bin": os.urandom(5000)})
    hub.drops["big.bin"] = [1000] * 10  # no progress after the first 1000 bytes
    monkeypatch.setattr(dl, "RETRIES", 2)
    with pytest.raises(HubError, match=r"big.bin from org/big failed 3 times in a row") as e:
        download("org/big", tmp_path / "out", hub=hub.options())
    part = tmp_path / "out" / PARTIAL_DIR / "big.bin.part"
    assert "resumes from the 1000 bytes" in e.value.hint
    assert part.stat().st_size == 1000


def test_killed_process_resumes_with_a_range_request(hub: FakeHub, tmp_path: Path) -> None:
    data = os.urandom(256 * 1024)
    hub.add_repo("org/slow", {"weights.bin": data})
    hub.slow = (1024, 0.02)  # ~5 s for the whole file
    out = tmp_path / "out"
    part = out / PARTIAL_DIR / "weights.bin.part"
    cmd = [
        sys.executable,
        "-m",
        "weightkit",
        "download",
        "org/slow",
        "--out",
        str(out),
        "--endpoint",
        hub.url,
        "--quiet",
    ]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1"}

    kept = kill_once_grown(cmd, env, part)
    assert 32 * 1024 <= kept < len(data)

    hub.slow = None
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    last = hub.requests("GET", "/resolve/")[-1]
    assert last.headers.get("Range") == f"bytes={kept}-"
    got = (out / "weights.bin").read_bytes()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert not (out / PARTIAL_DIR).exists()


def test_a_second_run_skips_files_already_in_place(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("org/toy", FILES)
    download("org/toy", tmp_path / "out", hub=hub.options())
    gets = len(hub.requests("GET", "/resolve/"))
    (tmp_path / "out" / "config.json").write_bytes(b'{"model_type": "gpt2!"}')  # same size

    again = download("org/toy", tmp_path / "out", hub=hub.options())

    assert again.downloaded == ["config.json"]
    assert again.present == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "model.safetensors",
    ]
    assert fetched(hub)[gets:] == ["config.json"]
    assert (tmp_path / "out" / "config.json").read_bytes() == FILES["config.json"]


@pytest.mark.parametrize(
    ("name", "offset", "algo"),
    [
        ("model.safetensors", 100, "sha256"),  # LFS: checked against the LFS oid
        ("config.json", 3, "git-sha1"),  # small file: checked against the git blob sha1
    ],
)
def test_corrupted_byte_is_caught_and_the_file_not_kept(
    hub: FakeHub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    offset: int,
    algo: str,
) -> None:
    hub.add_repo("org/toy", FILES)
    hub.corrupt[name] = offset
    out = tmp_path / "out"

    with pytest.raises(SystemExit) as e:
        main(["download", "org/toy", "--out", str(out), "--endpoint", hub.url, "--quiet"])

    assert e.value.code == 1
    err = capsys.readouterr().err
    assert f"Error: org/toy: {name} has {algo} " in err
    assert "the download was deleted" in err
    assert not (out / name).exists()
    assert not (out / PARTIAL_DIR).exists()
    assert len(listing(out)) == len(FILES) - 1  # the other files are fine and kept


def test_every_corrupted_file_is_named(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("org/toy", FILES)
    hub.corrupt.update({"model.safetensors": 0, "adapter_model.safetensors": 0})
    with pytest.raises(ChecksumError) as e:
        download("org/toy", tmp_path / "out", hub=hub.options())
    lines = e.value.message.splitlines()
    assert lines[0] == "2 files of org/toy did not match the Hub's hashes and were deleted:"
    assert sorted(line.split(" has ")[0] for line in lines[1:]) == [
        "org/toy: adapter_model.safetensors",
        "org/toy: model.safetensors",
    ]
    assert listing(tmp_path / "out") == ["README.md", "adapter_config.json", "config.json"]


def test_repo_not_found(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(HubError) as e:
        download("org/missing", tmp_path / "out", hub=hub.options())
    assert e.value.message == (
        f"repo org/missing was not found on {hub.url}, or it is private and no token was given"
    )
    assert "hf auth login" in e.value.hint


def test_private_repo_needs_the_token_and_never_shows_it(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("org/private", {"config.json": b"{}"}, private=True)
    with pytest.raises(HubError, match="or it is private and no token was given"):
        download("org/private", tmp_path / "a", hub=hub.options())
    with pytest.raises(HubError) as e:
        download("org/private", tmp_path / "b", hub=hub.options(token="hf_wrong_token"))
    assert "the token in use cannot read it" in e.value.message
    assert "hf_wrong_token" not in str(e.value)

    download("org/private", tmp_path / "c", hub=hub.options(token=TOKEN))
    assert (tmp_path / "c" / "config.json").read_bytes() == b"{}"
    assert {r.headers.get("Authorization") for r in hub.requests("GET", "/resolve/")} == {
        f"Bearer {TOKEN}"
    }


def test_gated_repo(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("org/gated", {"config.json": b"{}"}, gated=True)
    with pytest.raises(HubError) as e:
        download("org/gated", tmp_path / "out", hub=hub.options())
    assert e.value.message == "org/gated is a gated repo and this account has no access to it yet"
    assert f"Accept its conditions at {hub.url}/org/gated" in e.value.hint


def test_revision_not_found(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("org/toy", FILES)
    with pytest.raises(HubError) as e:
        download("org/toy", tmp_path / "out", revision="v9", hub=hub.options())
    assert e.value.message == "revision 'v9' was not found in org/toy"


def test_revision_is_pinned_to_its_commit(hub: FakeHub, tmp_path: Path) -> None:
    sha = hub.add_repo("org/toy", FILES)
    result = download(
        "org/toy", tmp_path / "out", include=["config.json"], revision=sha, hub=hub.options()
    )
    assert result.commit == sha
    assert hub.requests("GET", "/resolve/")[0].path == f"/org/toy/resolve/{sha}/config.json"


@pytest.mark.parametrize(
    "name",
    [
        "../evil.txt",
        "/abs.txt",
        "sub/../../evil.txt",
        "C:evil.txt",
        "sub\\..\\..\\evil.txt",
        f"{PARTIAL_DIR}/x.part",
    ],
)
def test_names_escaping_the_folder_are_refused(hub: FakeHub, tmp_path: Path, name: str) -> None:
    hub.add_repo("org/hostile", {"config.json": b"{}", name: b"gotcha"})
    with pytest.raises(HubError) as e:
        download("org/hostile", tmp_path / "out", hub=hub.options())
    assert e.value.message == (
        f"org/hostile lists a file named {name!r}, which is not a plain "
        f"path inside {tmp_path / 'out'}; nothing was downloaded"
    )
    assert hub.requests("GET", "/resolve/") == []
    assert listing(tmp_path) == []


def test_names_through_a_symlink_out_of_the_folder_are_refused(
    hub: FakeHub, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere")
    hub.add_repo("org/hostile", {"link/evil.txt": b"gotcha"})
    with pytest.raises(HubError, match="'link/evil.txt', which is not a plain path inside"):
        download("org/hostile", tmp_path / "out", hub=hub.options())
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_not_enough_disk_space_is_refused_up_front(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/toy", FILES)

    class Usage:
        free = 500

    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage())
    with pytest.raises(OutputError) as e:
        download("org/toy", tmp_path / "out", hub=hub.options())
    assert e.value.message == f"{tmp_path / 'out'} has 500 B free, the download needs 5.17 kB more"
    assert hub.requests("GET", "/resolve/") == []


def test_disk_full_while_writing(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/big", {"big.bin": os.urandom(5000)})

    def full(self: dl._Part, chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl._Part, "write", full)
    with pytest.raises(OutputError) as e:
        download("org/big", tmp_path / "out", hub=hub.options())
    part = tmp_path / "out" / PARTIAL_DIR / "big.bin.part"
    assert e.value.message == f"the disk is full: {part} stopped at 0 bytes"


# --- releases from the catalog -----------------------------------------------------------------


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A catalog with one release, toy-7b, whose LoRA part has an md5 manifest."""
    folder = tmp_path / "checksums"
    folder.mkdir()
    (folder / "toy-7b-lora.md5").write_text(
        "".join(f"{hashlib.md5(FILES[n]).hexdigest()}  {n}\n" for n in LORA)
    )
    (folder / "catalog.json").write_text(
        json.dumps(
            {
                "format": "weightkit.catalog",
                "version": 1,
                "releases": {
                    "toy-7b": {
                        "description": "a toy",
                        "parts": {
                            "diff": {"repo": "org/toy-diff"},
                            "diff-fp16": {"repo": "org/toy-diff-fp16"},
                            "lora": {"repo": "org/toy-lora", "manifest": "toy-7b-lora.md5"},
                            "recovered": {"manifest": "toy-7b-lora.md5"},
                        },
                    }
                },
            }
        )
    )
    monkeypatch.setenv("WEIGHTKIT_CHECKSUMS", str(folder))
    return folder


def test_release_parts_resolve_through_the_catalog(
    hub: FakeHub, tmp_path: Path, catalog: Path
) -> None:
    hub.add_repo("org/toy-diff", {"diff.bin": b"d" * 10})
    hub.add_repo("org/toy-diff-fp16", {"diff16.bin": b"h" * 10})

    assert download("toy-7b", tmp_path / "a", hub=hub.options()).repo == "org/toy-diff"
    assert (
        download("toy-7b", tmp_path / "b", only_base=True, hub=hub.options()).repo == "org/toy-diff"
    )
    assert (
        download("toy-7b", tmp_path / "c", fp16=True, hub=hub.options()).repo == "org/toy-diff-fp16"
    )
    assert listing(tmp_path / "c") == ["diff16.bin"]


def test_release_lora_is_verified_against_its_manifest(
    hub: FakeHub, tmp_path: Path, catalog: Path
) -> None:
    hub.add_repo("org/toy-lora", {n: FILES[n] for n in LORA})
    result = download("toy-7b", tmp_path / "out", only_lora=True, hub=hub.options())
    assert result.repo == "org/toy-lora"
    assert result.manifest == catalog / "toy-7b-lora.md5"
    assert result.verify_report is not None and result.verify_report.ok
    # the verify summary is the second line, as the command printed it after the download's
    assert result.summary().splitlines()[1] == result.verify_report.summary()
    assert result.verify_report.summary().startswith(
        f"2 ok, 0 MISMATCH, 0 missing, 0 extra: files of {tmp_path / 'out'} checked against "
        f"{catalog / 'toy-7b-lora.md5'} (md5), 2.07 kB in "
    )
    assert json.loads(json.dumps(result.to_dict()))["checked"] == {
        "manifest": str(catalog / "toy-7b-lora.md5"),
        "verify": json.loads(json.dumps(result.verify_report.to_dict())),
    }

    skipped = download("toy-7b", tmp_path / "out", only_lora=True, verify=False, hub=hub.options())
    assert (skipped.manifest, skipped.verify_report) == (None, None)


def test_release_manifest_mismatch_fails(hub: FakeHub, tmp_path: Path, catalog: Path) -> None:
    (catalog / "toy-7b-lora.md5").write_text(
        f"{'0' * 32}  adapter_model.safetensors\n{'1' * 32}  adapter_config.json\n"
    )
    # the repo lacks adapter_config.json: an unfiltered download must have every listed file
    hub.add_repo("org/toy-lora", {"adapter_model.safetensors": FILES["adapter_model.safetensors"]})
    with pytest.raises(ChecksumError) as e:
        download("toy-7b", tmp_path / "out", only_lora=True, hub=hub.options())
    assert e.value.message == (
        f"{tmp_path / 'out'} does not match the catalog manifest "
        "toy-7b-lora.md5: adapter_model.safetensors (MISMATCH), "
        "adapter_config.json (missing)"
    )
    assert e.value.hint == (
        "Download the files named again, or tell the catalog's maintainers "
        f"(checking {tmp_path / 'out'} against {catalog / 'toy-7b-lora.md5'} "
        "lists every file)."
    )
    # what was fetched and checked travels with the error, for the command to show first
    assert e.value.result.downloaded == ["adapter_model.safetensors"]
    assert e.value.result.verify_report.counts() == {
        "ok": 0,
        "MISMATCH": 1,
        "missing": 1,
        "extra": 0,
    }


def test_cli_prints_the_download_and_verify_summaries(
    hub: FakeHub, tmp_path: Path, catalog: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commit = hub.add_repo("org/toy-lora", {n: FILES[n] for n in LORA})
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["download", "toy-7b", "--only-lora", "--out", str(out), "--endpoint", hub.url])
    assert e.value.code == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == ""
    assert re.fullmatch(
        rf"org/toy-lora@{commit[:8]}: 2 files downloaded \(2\.07 kB in "
        rf"\d+\.\d s\), 0 already there, into {re.escape(str(out))}",
        lines[-2],
    )
    assert lines[-1].startswith(f"2 ok, 0 MISMATCH, 0 missing, 0 extra: files of {out} ")
    assert lines[-1].endswith(" Everything listed matches.")

    (catalog / "toy-7b-lora.md5").write_text(f"{'0' * 32}  adapter_model.safetensors\n")
    with pytest.raises(SystemExit) as e:
        main(["download", "toy-7b", "--only-lora", "--out", str(out), "--endpoint", hub.url])
    assert e.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert re.fullmatch(
        rf"org/toy-lora@{commit[:8]}: 0 files downloaded \(0 B in \d+\.\d s\), "
        rf"2 already there, into {re.escape(str(out))}",
        lines[-4],
    )
    assert lines[-3].startswith("0 ok, 1 MISMATCH, 0 missing, 1 extra: ")
    assert lines[-2:] == [
        f"Error: {out} does not match the catalog manifest toy-7b-lora.md5: "
        "adapter_model.safetensors (MISMATCH)",
        f"Download the files named again, or tell the catalog's maintainers (checking {out} "
        f"against {catalog / 'toy-7b-lora.md5'} lists every file).",
    ]

    # --json: the error, and what was fetched and checked before it, as one object
    with pytest.raises(SystemExit) as e:
        main(
            [
                "download",
                "toy-7b",
                "--only-lora",
                "--out",
                str(out),
                "--endpoint",
                hub.url,
                "--json",
            ]
        )
    assert e.value.code == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert (sorted(doc), captured.err) == (["error", "hint", "result"], "")
    assert doc["error"].endswith("toy-7b-lora.md5: adapter_model.safetensors (MISMATCH)")
    assert doc["result"]["present"] == ["adapter_config.json", "adapter_model.safetensors"]
    assert doc["result"]["checked"]["verify"]["counts"] == {
        "ok": 0,
        "MISMATCH": 1,
        "missing": 0,
        "extra": 1,
    }


def test_plain_repo_of_a_release_part_is_verified_too(
    hub: FakeHub, tmp_path: Path, catalog: Path
) -> None:
    hub.add_repo("org/toy-lora", {n: FILES[n] for n in LORA})
    result = download(
        "org/toy-lora", tmp_path / "out", include=["adapter_model.*"], hub=hub.options()
    )
    assert result.manifest == catalog / "toy-7b-lora.md5"
    # adapter_config.json is listed but was left out on purpose: only what was fetched counts
    assert [(r.name, r.verdict) for r in result.verify_report.rows] == [
        ("adapter_model.safetensors", "ok")
    ]


@pytest.mark.parametrize(
    ("name", "flags", "message"),
    [
        ("toy-8b", {}, "'toy-8b' is neither a Hub repo id (org/name) nor a release in the catalog"),
        (
            "toy-7b",
            {"only_lora": True, "fp16": True},
            "release toy-7b has no fp16 LoRA; use `only_lora` or `fp16`",
        ),
        ("org/toy", {"fp16": True}, "`fp16` picks the fp16 diff of a release; org/toy is a repo"),
        (
            "org/toy",
            {"only_lora": True, "only_base": True},
            "`only_lora` and `only_base` exclude each other",
        ),
    ],
)
def test_bad_selections(
    hub: FakeHub, tmp_path: Path, catalog: Path, name: str, flags: dict, message: str
) -> None:
    with pytest.raises(InputError) as e:
        download(name, tmp_path / "out", hub=hub.options(), **flags)
    assert e.value.message == message  # parameters in backquotes; the CLI shows its flags
    assert hub.log == []
