"""`weightkit verify` and `weightkit checksum` on the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from weightkit.cli import cli

ONE = b"weights one\n" * 1000
TWO = b"weights two\n" * 1000
ONE_MD5 = "6b4fddd478b41a578e24e0479285bb00"
ONE_FLIPPED_MD5 = "ede729be4935bc62e7e40acc669ba3cf"  # ONE with its last 'e' turned into 'E'
TWO_MD5 = "12802cd06b23acf90630f4eb805c8a5d"


@pytest.fixture
def download(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "one.bin").write_bytes(ONE)
    (folder / "sub" / "two.bin").write_bytes(TWO)
    (tmp_path / "sums.md5").write_text(f"{ONE_MD5}  one.bin\n{TWO_MD5} *sub/two.bin\n")
    return folder


def run(*args: str | Path) -> tuple[int, list[str], str]:
    """Exit code, stdout lines without trailing blanks, stderr."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, [line.rstrip() for line in result.stdout.splitlines()], result.stderr


def weightkit(*args: str | Path) -> subprocess.CompletedProcess:
    """The real entry point, with its error handling."""
    return subprocess.run(
        [sys.executable, "-m", "weightkit", *map(str, args)], capture_output=True, text=True
    )


def test_all_ok_prints_the_table_and_exits_0(download: Path) -> None:
    code, out, err = run("verify", download, "--manifest", download.parent / "sums.md5")
    assert code == 0
    assert out == [
        "file         expected                          actual                            verdict",
        f"one.bin      {ONE_MD5}  {ONE_MD5}  ok",
        f"sub/two.bin  {TWO_MD5}  {TWO_MD5}  ok",
    ]
    assert "2 ok, 0 MISMATCH, 0 missing, 0 extra: files of " in err
    assert err.rstrip().endswith("Everything listed matches.")


def test_flipped_byte_is_mismatch_and_exit_1(download: Path) -> None:
    data = bytearray(ONE)
    data[-2] ^= 0x20
    (download / "one.bin").write_bytes(bytes(data))
    code, out, err = run("-q", "verify", download, "--manifest", download.parent / "sums.md5")
    assert code == 1
    assert out[1] == f"one.bin      {ONE_MD5}  {ONE_FLIPPED_MD5}  MISMATCH"
    assert out[2] == f"sub/two.bin  {TWO_MD5}  {TWO_MD5}  ok"
    assert err == ""  # -q: no progress, no summary


def test_missing_file_exits_1_and_extra_is_listed(download: Path) -> None:
    (download / "one.bin").rename(download / "renamed.bin")
    code, out, err = run("verify", "--quiet", download, "--manifest", download.parent / "sums.md5")
    assert code == 1
    assert out[1:] == [
        f"one.bin      {ONE_MD5}  -                                 missing",
        f"sub/two.bin  {TWO_MD5}  {TWO_MD5}  ok",
        "renamed.bin  -                                 -                                 extra",
    ]


def test_json_report(download: Path) -> None:
    (download / "sub" / "two.bin").unlink()
    code, out, _ = run(
        "verify", download, "--manifest", download.parent / "sums.md5", "--json", "--jobs", "2"
    )
    assert code == 1
    doc = json.loads("\n".join(out))
    assert doc["ok"] is False
    assert doc["algo"] == "md5"
    assert doc["counts"] == {"ok": 1, "MISMATCH": 0, "missing": 1, "extra": 0}
    assert doc["rows"][1] == {
        "name": "sub/two.bin",
        "expected": TWO_MD5,
        "actual": None,
        "verdict": "missing",
        "note": "",
    }


def test_known_manifest(tmp_path: Path) -> None:
    (tmp_path / "adapter_model.bin").write_bytes(ONE)
    code, out, _ = run("verify", tmp_path, "--known", "zhixi-13b-lora", "--algo", "md5", "-q")
    assert code == 1
    assert out[1] == f"adapter_model.bin  308f8424b1b6ac8dff343716dd78cde7  {ONE_MD5}  MISMATCH"


def test_checksum_round_trips_through_verify(download: Path) -> None:
    out_file = download.parent / "published.md5"
    code, out, err = run("checksum", download, "--out", out_file)
    assert code == 0
    assert out == []
    assert err.splitlines()[-1] == f"checksum: wrote 2 md5 line(s) to {out_file}."
    assert out_file.read_text() == f"{ONE_MD5}  one.bin\n{TWO_MD5}  sub/two.bin\n"
    code, out, _ = run("verify", download, "--manifest", out_file, "-q")
    assert code == 0
    assert [line.split()[-1] for line in out[1:]] == ["ok", "ok"]


def test_checksum_default_file_is_found_by_verify(download: Path) -> None:
    assert run("checksum", download, "--algo", "sha256", "-q")[0] == 0
    assert (download / "checksums.sha256").is_file()
    code, out, _ = run("verify", download, "-q")
    assert code == 0
    assert out[0].split() == ["file", "expected", "actual", "verdict"]


def test_tensor_manifest_names_the_damaged_tensor(tmp_path: Path) -> None:
    import torch

    from weightkit.checkpoint import write_checkpoint
    from weightkit.engine import Job, identity
    from weightkit.io.tensor_info import TensorInfo
    from weightkit.options import WriteOptions

    t = torch.arange(16, dtype=torch.float32)
    jobs = [
        Job(TensorInfo(name, t.dtype, (16,)), lambda: (t,), identity)
        for name in ("a.weight", "b.weight")
    ]
    write_checkpoint(tmp_path / "out", jobs, title="test", inputs=[], options=WriteOptions())
    shard = tmp_path / "out" / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x20  # last byte of the last tensor, b.weight
    shard.write_bytes(bytes(data))
    code, out, _ = run("verify", tmp_path / "out", "-q")
    assert code == 1
    assert out[0].split() == ["tensor", "expected", "actual", "verdict"]
    assert [(line.split()[0], line.split()[-1]) for line in out[1:]] == [
        ("a.weight", "ok"),
        ("b.weight", "MISMATCH"),
    ]


def test_errors_are_one_message_without_traceback(tmp_path: Path) -> None:
    done = weightkit("verify", tmp_path / "nowhere")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == f"Error: {tmp_path / 'nowhere'}: no such file or folder\n"


def test_escaping_path_is_refused(download: Path) -> None:
    evil = download.parent / "evil.md5"
    evil.write_text(f"{ONE_MD5}  ../sums.md5\n")
    done = weightkit("verify", download, "--manifest", evil)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"Error: {evil}:1: '../sums.md5' is not a path inside the folder being checked",
        "A checksum file may only name files inside that folder (no ../, no absolute paths); "
        "make sure it is the publisher's file.",
    ]


def test_real_entry_point_exits_1_on_mismatch(download: Path) -> None:
    (download / "one.bin").write_bytes(TWO)
    done = weightkit("-q", "verify", download, "--manifest", download.parent / "sums.md5")
    assert done.returncode == 1
    assert done.stderr == ""
    assert done.stdout.splitlines()[1].split() == ["one.bin", ONE_MD5, TWO_MD5, "MISMATCH"]


def test_bad_jobs_is_a_usage_error(download: Path) -> None:
    code, _, err = run("verify", download, "--jobs", "0")
    assert code == 2
    assert "Invalid value for '--jobs' / '-j': 0 is not in the range x>=1." in err
