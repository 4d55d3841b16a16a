"""`download --json` and `push --json`: one JSON object on stdout, for a result or an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from weightkit.cli import main

from .conftest import TOKEN, FakeHub

FILES = {"config.json": b'{"model_type": "llama"}', "model.safetensors": bytes(range(256)) * 8}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    captured = capsys.readouterr()
    return int(e.value.code or 0), json.loads(captured.out), captured.err


def test_download_json(hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit = hub.add_repo("org/toy", FILES)
    out = tmp_path / "out"
    code, doc, err = run(
        capsys, "download", "org/toy", "--out", str(out), "--endpoint", hub.url, "--json", "--quiet"
    )
    assert (code, err) == (0, "")
    assert {
        k: doc[k] for k in ("repo", "commit", "out", "dry_run", "downloaded", "present", "bytes")
    } == {
        "repo": "org/toy",
        "commit": commit,
        "out": str(out),
        "dry_run": False,
        "downloaded": ["config.json", "model.safetensors"],
        "present": [],
        "bytes": len(FILES["config.json"]) + 2048,
    }
    assert (out / "model.safetensors").read_bytes() == FILES["model.safetensors"]

    code, doc, _ = run(
        capsys, "download", "org/toy", "--out", str(out), "--endpoint", hub.url, "--json", "--quiet"
    )
    assert (code, doc["downloaded"], doc["present"]) == (
        0,
        [],
        ["config.json", "model.safetensors"],
    )


def test_download_error_json(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc, err = run(
        capsys,
        "download",
        "org/none",
        "--out",
        str(tmp_path / "out"),
        "--endpoint",
        hub.url,
        "--json",
    )
    assert (code, err) == (1, "")
    assert set(doc) == {"error", "hint"}
    assert doc["error"].startswith("repo org/none ")
    assert doc["hint"].endswith(f"set HF_TOKEN to a token from {hub.url}/settings/tokens.")
    assert not (tmp_path / "out").exists()


# huggingface_hub's own LFS upload passes a file as data=, which httpx2 deprecates
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
def test_push_json(
    hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = tmp_path / "model"
    folder.mkdir()
    for name, data in FILES.items():
        (folder / name).write_bytes(data)
    code, doc, err = run(
        capsys, "push", str(folder), "me/toy", "--endpoint", hub.url, "--json", "-q"
    )
    head = hub.repos["me/toy"].branches["main"]
    assert (code, err) == (0, "")
    assert {k: doc[k] for k in ("repo", "commit", "commit_url", "uploaded", "unchanged")} == {
        "repo": "me/toy",
        "commit": head,
        "commit_url": f"{hub.url}/me/toy/commit/{head}",
        "uploaded": ["config.json", "model.safetensors"],
        "unchanged": [],
    }
    assert TOKEN not in json.dumps(doc)
