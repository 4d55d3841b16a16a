"""Every bad input: one clear message, a non-zero exit, no traceback, inputs untouched."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from weightkit.cli import _run

NAMES = ["model.layers.0.mlp.up_proj.weight", "model.norm.weight"]


def run(capsys, *args: str) -> tuple[int, str]:
    code = _run(["--quiet", *args], debug=False)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, " ".join(err.split())


def fingerprint(*folders: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for f in folders
        for p in sorted(f.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def pair(tmp_path):
    raw, diff = tmp_path / "raw", tmp_path / "diff"
    raw.mkdir()
    diff.mkdir()
    save_file(
        {
            NAMES[0]: torch.ones(4, 4, dtype=torch.float16),
            NAMES[1]: torch.ones(4, dtype=torch.float16),
        },
        raw / "model.safetensors",
    )
    save_file(
        {NAMES[0]: torch.full((4, 4), 0.5), NAMES[1]: torch.zeros(4)}, diff / "model.safetensors"
    )
    return raw, diff


def recover(capsys, raw: Path, diff: Path, out: Path, *extra: str) -> tuple[int, str]:
    return run(capsys, "recover", "--raw", str(raw), "--diff", str(diff), "--out", str(out), *extra)


def test_truncated_safetensors(capsys, pair, tmp_path):
    raw, diff = pair
    f = diff / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    before = fingerprint(raw, diff)
    code, err = recover(capsys, raw, diff, tmp_path / "out")
    assert code == 1
    assert err == (
        f"Error: {f}: file is truncated: tensor '{NAMES[1]}' ends at byte 80 of the "
        "data, but the file holds 70 Download the file again (weightkit verify can "
        "tell which files are damaged)."
    )
    assert fingerprint(raw, diff) == before and not (tmp_path / "out").exists()


def test_garbled_header(capsys, pair, tmp_path):
    raw, diff = pair
    (diff / "model.safetensors").write_bytes(struct.pack("<Q", 6) + b"{nope}")
    code, err = recover(capsys, raw, diff, tmp_path / "out")
    assert code == 1
    assert err.startswith(f"Error: {diff / 'model.safetensors'}: garbled safetensors header:")


def test_index_missing_shard_and_index_not_json(capsys, pair, tmp_path):
    raw, diff = pair
    index = {
        "weight_map": {
            NAMES[0]: "model-00001-of-00002.safetensors",
            NAMES[1]: "model-00002-of-00002.safetensors",
        }
    }
    (diff / "model.safetensors.index.json").write_text(json.dumps(index))
    code, err = recover(capsys, raw, diff, tmp_path / "out")
    assert (code, err) == (
        1,
        f"Error: {diff / 'model.safetensors.index.json'}: names shard "
        f"model-00001-of-00002.safetensors which is not in {diff} (and 1 "
        "more) Download the missing shards, or remove the stale index file.",
    )
    (diff / "model.safetensors.index.json").write_text("not json")
    code, err = recover(capsys, raw, diff, tmp_path / "out")
    assert code == 1 and "model.safetensors.index.json: not a valid index file" in err


def test_tensor_listed_twice(capsys, pair, tmp_path):
    raw, diff = pair
    save_file({NAMES[1]: torch.zeros(4)}, diff / "extra.safetensors")
    code, err = recover(capsys, raw, diff, tmp_path / "out")
    assert (code, err) == (
        1,
        f"Error: {diff}: tensor '{NAMES[1]}' is stored twice "
        "(extra.safetensors and model.safetensors) The checkpoint is "
        "inconsistent; download it again.",
    )


def test_dtype_mismatch(capsys, pair, tmp_path):
    raw, diff = pair
    save_file(
        {NAMES[0]: torch.ones(4, 4, dtype=torch.int64), NAMES[1]: torch.zeros(4)},
        diff / "model.safetensors",
    )
    code, err = recover(capsys, raw, diff, tmp_path / "out")
    assert (code, err) == (
        1,
        f"Error: tensor '{NAMES[0]}': dtype int64 in the diff "
        f"({diff / 'model.safetensors'}) does not fit dtype fp16 in the raw "
        f"model ({raw / 'model.safetensors'}) Weight arithmetic needs "
        "floating-point tensors on both sides (or the same integer dtype); "
        "the diff was not made against this raw model.",
    )


def test_nan_produced_by_the_arithmetic(capsys, pair, tmp_path):
    raw, diff = pair
    save_file(
        {NAMES[0]: torch.full((4, 4), 70000.0), NAMES[1]: torch.zeros(4)},
        diff / "model.safetensors",
    )
    code, err = recover(capsys, raw, diff, tmp_path / "out", "--dtype", "fp16")
    assert (code, err) == (
        1,
        f"Error: tensor '{NAMES[0]}': the result has 16 NaN/Inf value(s) "
        "although its inputs are finite (overflow in torch.float16?) Write a "
        "wider dtype (--dtype fp32 or bf16), or check the adapter's scaling.",
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.weightkit-partial").exists()


def test_out_is_in_or_inside_in(capsys, pair):
    raw, diff = pair
    for out in (diff, diff / "sub"):
        code, err = recover(capsys, raw, diff, out, "--overwrite")
        assert (code, err) == (
            1,
            f"Error: output {out} overlaps the input {diff} Write the "
            "output to a folder of its own, outside every input.",
        )


def test_out_exists_without_overwrite(capsys, pair, tmp_path):
    raw, diff = pair
    (tmp_path / "out").mkdir()
    code, err = recover(capsys, raw, diff, tmp_path / "out")
    assert (code, err) == (
        1,
        f"Error: output {tmp_path / 'out'} already exists Pass --overwrite to replace it.",
    )
    assert recover(capsys, raw, diff, tmp_path / "out", "--overwrite")[0] == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out(capsys, pair, tmp_path):
    raw, diff = pair
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    code, err = recover(capsys, raw, diff, ro / "out")
    assert (code, err) == (
        1,
        f"Error: cannot write to {ro}: permission denied Choose an --out "
        "in a folder you can write to.",
    )


def test_read_only_out_as_root(capsys, pair, tmp_path, monkeypatch):
    """Root ignores permission bits, so the refusal is injected where the OS would raise it."""
    raw, diff = pair

    def refuse(*_args, **_kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("weightkit.io.output.OutputFolder.__enter__", refuse)
    code, err = recover(capsys, raw, diff, tmp_path / "out")
    assert (code, err) == (
        1,
        f"Error: cannot write {tmp_path / 'out'}: Permission denied "
        "Check the folder's permissions and the disk, then run again.",
    )


def test_disk_full_mid_run_leaves_nothing(capsys, pair, tmp_path, monkeypatch):
    raw, diff = pair
    import weightkit.io.writer as writer

    calls = {"n": 0}
    real = writer.write_chunked

    def fill_up(f, data):
        calls["n"] += 1
        if calls["n"] == 2:  # the second tensor: part of the output is already on disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(writer, "write_chunked", fill_up)
    code, err = recover(capsys, raw, diff, tmp_path / "out")
    assert code == 1
    assert err.startswith(
        f"Error: disk full while writing {tmp_path / 'out'} (the output needs 80 B;"
    )
    assert err.endswith(
        "The partial output was removed. Free some space or choose another "
        "--out, then run the command again."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diff", "raw"]


def test_hostile_pickle_never_runs(capsys, pair, tmp_path):
    raw, _ = pair
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({NAMES[0]: Payload()}, evil / "pytorch_model.bin")
    code, err = recover(capsys, raw, evil, tmp_path / "out")
    assert code == 1
    assert err.startswith(
        f"Error: {evil / 'pytorch_model.bin'}: refused to load: the pickle "
        "inside is not plain tensors"
    )
    assert not marker.exists()
