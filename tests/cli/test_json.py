"""`--json` on every command: one JSON object on stdout, read back with json.loads, holding what
was written (checked against the files on disk) and what was checked; nothing on stderr."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import make_meta
from tests.ops.lora_models import build_base, make_adapter
from weightkit.cli import _run
from weightkit.manifest import MANIFEST_NAME

EXAMPLE = Path(__file__).parents[2] / "examples" / "tiny-llama"
RAW, DIFF = str(EXAMPLE / "raw"), str(EXAMPLE / "diff")


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = _run([*args, "--json"], debug=False)
    captured = capsys.readouterr()
    assert captured.err == ""  # --json alone: no summary, and no bar outside a terminal
    return code, json.loads(captured.out)


def written(out: Path, doc: dict) -> None:
    """The document's files, tensor count and dtypes are what lies in `out`."""
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    tensors = manifest.get("tensors", manifest)
    assert doc["out"] == str(out)
    assert doc["dry_run"] is False
    assert doc["files"] == sorted(p.name for p in out.glob("model*.safetensors*"))
    assert doc["tensors"] == len(tensors)
    assert doc["dtypes"] == sorted({t["dtype"] for t in tensors.values()})
    assert doc["bytes"] == sum(_nbytes(t) for t in tensors.values())
    assert isinstance(doc["seconds"], float) and doc["seconds"] >= 0


def _nbytes(entry: dict) -> int:
    size = {"F32": 4, "F16": 2, "BF16": 2}[entry["dtype"]]
    for d in entry["shape"]:
        size *= d
    return size


def test_recover_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, doc = run_json(capsys, "recover", "--raw", RAW, "--diff", DIFF, "--out", str(out))
    assert code == 0
    written(out, doc)
    assert doc["command"] == "recover"
    assert doc["checked"] == {
        "against": "the tuned model",
        "tensors": 21,
        "exact": 21,
        "within_rounding": [],
        "not_checked": 0,
    }
    for f in (EXAMPLE / "tuned").iterdir():  # the same bytes as without --json
        assert (
            hashlib.sha256((out / f.name).read_bytes()).digest()
            == hashlib.sha256(f.read_bytes()).digest()
        )


def test_a_dry_run_json_gives_the_needs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, doc = run_json(
        capsys, "recover", "--raw", RAW, "--diff", DIFF, "--out", str(out), "--dry-run"
    )
    assert code == 0
    assert (doc["dry_run"], doc["files"], doc["tensors"]) == (True, [], 21)
    needs = doc["needs"]
    assert needs["bytes"] == doc["bytes"] > 0
    assert needs["largest_tensor"] == "lm_head.weight"  # the first of the two largest
    assert needs["disk_free"] > 0 and needs["memory"] >= needs["largest_tensor_bytes"]
    assert not out.exists()


def test_diff_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "diff"
    code, doc = run_json(
        capsys,
        "diff",
        "--raw",
        RAW,
        "--tuned",
        str(EXAMPLE / "tuned"),
        "--out",
        str(out),
        "--dtype",
        "fp16",
    )
    assert code == 0
    written(out, doc)
    assert (doc["command"], doc["dtypes"]) == ("diff", ["F16"])
    assert doc["notes"] == ["Recovering from this diff gives all 21 tensors bit for bit."]


def test_merge_lora_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = build_base("llama", torch.float16, tmp_path / "base")
    adapter = make_adapter(
        base,
        tmp_path / "adapter",
        torch.float16,
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
    )
    capsys.readouterr()  # what building them printed
    out = tmp_path / "merged"
    code, doc = run_json(
        capsys, "merge-lora", "--base", str(base), "--lora", str(adapter), "--out", str(out)
    )
    assert code == 0
    written(out, doc)
    assert (doc["command"], doc["dtypes"], doc["checked"]) == ("merge-lora", ["F16"], {})


def test_convert_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = make_meta(tmp_path)
    out = tmp_path / "hf"
    code, doc = run_json(
        capsys, "convert", "--input-dir", str(meta), "--out", str(out), "--max-shard-size", "2MB"
    )
    assert code == 0
    written(out, doc)
    assert doc["command"] == "convert"
    assert len(doc["files"]) > 1  # sharded as asked


def test_checksum_and_verify_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.bin").write_bytes(b"a" * 10)
    code, doc = run_json(capsys, "checksum", str(tmp_path))
    assert code == 0
    assert {k: doc[k] for k in ("path", "algo", "files", "bytes_hashed")} == {
        "path": str(tmp_path / "checksums.md5"),
        "algo": "md5",
        "files": ["a.bin"],
        "bytes_hashed": 10,
    }
    code, doc = run_json(capsys, "verify", str(tmp_path))
    assert (code, doc["ok"], doc["counts"]) == (
        0,
        True,
        {"ok": 1, "MISMATCH": 0, "missing": 0, "extra": 0},
    )
    (tmp_path / "a.bin").write_bytes(b"b" * 10)
    code, doc = run_json(capsys, "verify", str(tmp_path))
    assert (code, doc["ok"], doc["rows"][0]["verdict"]) == (1, False, "MISMATCH")


@pytest.mark.parametrize(
    "args",
    [
        ["recover", "--raw", RAW, "--diff", DIFF],
        ["diff", "--raw", RAW, "--tuned", RAW],
        ["merge-lora", "--base", RAW, "--lora", RAW],
        ["convert", "--input-dir", RAW],
    ],
)
def test_errors_as_json(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()  # exists: refused before any work
    code, doc = run_json(capsys, *args, "--out", str(out))
    assert code == 1
    assert set(doc) == {"error", "hint"}
    assert "`" not in doc["error"] + (doc["hint"] or "")  # the command's flags, not parameters
    assert list(out.iterdir()) == []
