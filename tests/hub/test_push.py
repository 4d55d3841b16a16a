"""`weightkit push` against the local fake Hub in conftest.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from weightkit.cli import main
from weightkit.hub.client import PARTIAL_DIR, HubError
from weightkit.hub.download import download
from weightkit.hub.push import push

from .conftest import TOKEN, FakeHub

# huggingface_hub's own LFS upload passes a file as data=, which httpx2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

BIG = os.urandom(3000)  # above the fake Hub's 1 KiB LFS threshold


def make_folder(root: Path) -> Path:
    folder = root / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_bytes(b'{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(BIG)
    (folder / "sub" / "notes.txt").write_bytes(b"notes\n")
    # never pushed: git internals and an unfinished download
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main\n")
    (folder / PARTIAL_DIR).mkdir()
    (folder / PARTIAL_DIR / "x.bin.part").write_bytes(b"half")
    return folder


EXPECTED = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": BIG,
    "sub/notes.txt": b"notes\n",
}


def uploads(hub: FakeHub) -> list[str]:
    """Requests that send content: LFS PUTs, preupload and commit calls."""
    return [
        f"{r.method} {r.path.split('?')[0]}"
        for r in hub.log
        if r.method == "PUT" or "/preupload/" in r.path or "/commit/" in r.path
    ]


def test_push_round_trips_and_a_second_push_uploads_nothing(
    hub: FakeHub, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = make_folder(tmp_path)

    first = push(folder, "me/toy", hub=hub.options(token=TOKEN))
    assert capfd.readouterr() == ("", "")  # a Python call prints nothing, not even hf's bars

    assert hub.files("me/toy") == EXPECTED
    assert hub.stored("me/toy", "model.safetensors").lfs is True
    assert hub.stored("me/toy", "config.json").lfs is False
    head = hub.repos["me/toy"].branches["main"]
    assert first.commit_url == f"{hub.url}/me/toy/commit/{head}"
    assert first.uploaded == ["config.json", "model.safetensors", "sub/notes.txt"]
    lfs_oid = hub.stored("me/toy", "model.safetensors").oid
    assert uploads(hub) == [
        "POST /api/models/me/toy/preupload/main",
        f"PUT /lfs/upload/{lfs_oid}",
        "POST /api/models/me/toy/commit/main",
    ]

    hub.log.clear()
    second = push(folder, "me/toy", hub=hub.options(token=TOKEN))

    assert uploads(hub) == []
    assert second.uploaded == []
    assert second.unchanged == ["config.json", "model.safetensors", "sub/notes.txt"]
    assert second.commit_url == first.commit_url
    assert capfd.readouterr() == ("", "")

    assert first.summary() == "me/toy: 3 files uploaded (3.03 kB), 0 unchanged"
    assert second.summary() == "me/toy: 0 files uploaded (0 B), 3 unchanged"
    files = ["config.json", "model.safetensors", "sub/notes.txt"]
    assert json.loads(json.dumps(first.to_dict())) == {
        "repo": "me/toy",
        "revision": "main",
        "folder": str(folder),
        "commit": head,
        "commit_url": f"{hub.url}/me/toy/commit/{head}",
        "files": files,
        "uploaded": files,
        "unchanged": [],
        "bytes": 23 + 3000 + 6,
        "seconds": round(first.seconds, 3),
        "notes": [],
    }
    assert json.loads(json.dumps(second.to_dict()))["commit"] == head

    back = download("me/toy", tmp_path / "back", hub=hub.options())
    assert back.commit == head
    assert {p: (tmp_path / "back" / p).read_bytes() for p in back.downloaded} == EXPECTED


def test_push_sends_only_what_changed(hub: FakeHub, tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    push(folder, "me/toy", hub=hub.options(token=TOKEN))
    (folder / "config.json").write_bytes(b'{"model_type": "mistral"}')
    hub.log.clear()

    result = push(folder, "me/toy", hub=hub.options(token=TOKEN), message="new config")

    assert result.uploaded == ["config.json"]
    assert uploads(hub) == [
        "POST /api/models/me/toy/preupload/main",
        "POST /api/models/me/toy/commit/main",
    ]
    assert hub.files("me/toy")["config.json"] == b'{"model_type": "mistral"}'


def test_push_to_a_new_branch_of_a_private_repo(hub: FakeHub, tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    push(folder, "me/secret", private=True, revision="dev", hub=hub.options(token=TOKEN))
    assert hub.repos["me/secret"].private is True
    assert hub.files("me/secret", "dev") == EXPECTED
    assert hub.files("me/secret", "main") == {}


def test_push_needs_a_token(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(HubError) as e:
        push(make_folder(tmp_path), "me/toy", hub=hub.options())
    assert e.value.message == "pushing to me/toy needs a Hugging Face token with write access"
    assert hub.log == []


def test_push_with_a_token_that_cannot_write(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(HubError) as e:
        push(make_folder(tmp_path), "me/toy", hub=hub.options(token="hf_read_only"))
    assert e.value.message == (
        f"{hub.url} refused the request for me/toy (HTTP 401): the token "
        "in use lacks the permission"
    )
    assert "hf_read_only" not in str(e.value)


def test_cli_push_prints_the_commit_url(
    hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = make_folder(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["push", str(folder), "me/toy", "--endpoint", hub.url, "-m", "first", "--quiet"])
    assert e.value.code == 0
    head = hub.repos["me/toy"].branches["main"]
    captured = capsys.readouterr()
    assert captured.out == f"{hub.url}/me/toy/commit/{head}\n"
    assert TOKEN not in captured.out + captured.err

    # without --quiet, the summary on stderr; the URL alone on stdout still
    (folder / "config.json").write_bytes(b'{"model_type": "mistral"}')
    with pytest.raises(SystemExit) as e:
        main(["push", str(folder), "me/toy", "--endpoint", hub.url])
    assert e.value.code == 0
    head = hub.repos["me/toy"].branches["main"]
    captured = capsys.readouterr()
    assert captured.out == f"{hub.url}/me/toy/commit/{head}\n"
    assert captured.err.splitlines()[-1] == "me/toy: 1 files uploaded (25 B), 2 unchanged"


def test_a_bad_endpoint_is_refused_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["push", str(make_folder(tmp_path)), "me/toy", "--endpoint", "hub.example"])
    assert e.value.code == 1
    assert capsys.readouterr().err == (
        "Error: --endpoint 'hub.example' is not an http(s) URL\n"
        "Give it like https://hf-mirror.com.\n"
    )
