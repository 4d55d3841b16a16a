"""The lossless diff container: safetensors files of frames, written in one pass."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from weightkit.errors import InputError
from weightkit.io.lossless_diff import (
    FORMAT,
    LosslessDiffReader,
    LosslessDiffWriter,
    is_lossless_diff,
    lossless_files,
)
from weightkit.io.tensor_info import TensorInfo

PLAN = [
    TensorInfo("a.weight", torch.float16, (6, 4)),
    TensorInfo("b.weight", torch.bfloat16, (5,)),
    TensorInfo("c.weight", torch.float32, (0,)),
]
RAW_SHAPES = {"a.weight": (5, 4), "b.weight": (5,), "c.weight": (0,)}
PAYLOADS = {"a.weight": b"frame-a" * 3, "b.weight": b"\x00\xff" * 40, "c.weight": b""}


def write(folder: Path, max_shard_size: int = 5 * 10**9) -> list[Path]:
    writer = LosslessDiffWriter(folder, PLAN, RAW_SHAPES, max_shard_size)
    for t in PLAN:
        writer.write(t.name, PAYLOADS[t.name])
    files = writer.close()
    assert writer.bytes_written == sum(f.stat().st_size for f in files)
    return files


def test_files_are_plain_safetensors_with_the_documented_metadata(tmp_path):
    (path,) = write(tmp_path)
    assert path.name == "lossless-diff.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert {n: bytes(f.get_tensor(n).numpy()) for n in f.keys()} == PAYLOADS
    assert (meta["format"], meta["version"], meta["encoding"]) == (
        FORMAT,
        "1",
        "sub-zigzag-planes-zstd",
    )
    assert json.loads(meta["tensors"]) == {
        "a.weight": {"dtype": "F16", "shape": [6, 4], "raw_shape": [5, 4]},
        "b.weight": {"dtype": "BF16", "shape": [5], "raw_shape": [5]},
        "c.weight": {"dtype": "F32", "shape": [0], "raw_shape": [0]},
    }
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0 and data[8 + n - 1 : 8 + n] == b" "  # the reserved room, padded
    assert len(data) == 8 + n + sum(len(p) for p in PAYLOADS.values())


def test_reader_lists_the_tuned_tensors_and_reads_frames(tmp_path):
    write(tmp_path)
    packed = LosslessDiffReader(tmp_path)
    assert {n: (i.dtype, i.shape) for n, i in packed.infos.items()} == {
        t.name: (t.dtype, t.shape) for t in PLAN
    }
    assert packed.raw_shapes == RAW_SHAPES
    assert packed.info("a.weight").file == tmp_path / "lossless-diff.safetensors"
    assert all(bytes(packed.read(n).numpy()) == p for n, p in PAYLOADS.items())
    assert packed.folder == tmp_path
    assert LosslessDiffReader(tmp_path / "lossless-diff.safetensors").folder == tmp_path


def test_files_are_split_by_decoded_size(tmp_path):
    files = write(tmp_path, max_shard_size=50)  # a: 48 bytes decoded, b: 10, c: 0
    assert [f.name for f in files] == [
        "lossless-diff-00001-of-00002.safetensors",
        "lossless-diff-00002-of-00002.safetensors",
    ]
    packed = LosslessDiffReader(tmp_path)
    assert [packed.info(n).file for n in packed.infos] == [files[0], files[1], files[1]]
    assert all(bytes(packed.read(n).numpy()) == p for n, p in PAYLOADS.items())


def test_writer_refuses_tensors_out_of_plan_order(tmp_path):
    writer = LosslessDiffWriter(tmp_path, PLAN, RAW_SHAPES)
    with pytest.raises(RuntimeError, match="got b.weight, planned a.weight"):
        writer.write("b.weight", b"x")
    writer.write("a.weight", b"x")
    with pytest.raises(RuntimeError, match="closed before"):
        writer.close()


def test_detection_by_file_name(tmp_path):
    assert not is_lossless_diff(tmp_path)
    save_file({"x": torch.zeros(2)}, tmp_path / "model.safetensors")
    assert not is_lossless_diff(tmp_path) and not is_lossless_diff(tmp_path / "model.safetensors")
    (path,) = write(tmp_path)
    assert lossless_files(tmp_path) == [path] == lossless_files(path)
    assert not is_lossless_diff(tmp_path / "missing")


def test_other_safetensors_under_the_name_are_refused(tmp_path):
    save_file(
        {"x": torch.zeros(2)}, tmp_path / "lossless-diff.safetensors", metadata={"format": "pt"}
    )
    with pytest.raises(InputError, match="not a weightkit lossless diff .*format is 'pt'"):
        LosslessDiffReader(tmp_path)


def test_a_newer_encoding_asks_for_an_upgrade(tmp_path):
    (path,) = write(tmp_path)
    data = path.read_bytes().replace(b'"version":"1"', b'"version":"2"')
    path.write_bytes(data)
    with pytest.raises(
        InputError, match="lossless diff version 2, .* this weightkit reads version 1"
    ):
        LosslessDiffReader(tmp_path)


def test_truncated_file_is_refused(tmp_path):
    (path,) = write(tmp_path)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(InputError, match="truncated"):
        LosslessDiffReader(tmp_path)


def test_tensor_in_two_files_is_refused(tmp_path):
    write(tmp_path)
    other = tmp_path / "copy"
    other.mkdir()
    write(other)
    (other / "lossless-diff.safetensors").rename(tmp_path / "lossless-diff-2.safetensors")
    with pytest.raises(InputError, match="tensor 'a.weight' is stored twice"):
        LosslessDiffReader(tmp_path)


def test_garbled_shapes_in_the_metadata_are_refused(tmp_path):
    (path,) = write(tmp_path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    tensors = json.loads(header["__metadata__"]["tensors"])
    tensors["a.weight"]["shape"] = ["6", 4]
    header["__metadata__"]["tensors"] = json.dumps(tensors)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])
    with pytest.raises(InputError) as e:
        LosslessDiffReader(tmp_path)
    assert (e.value.message, e.value.hint) == (
        f'{path}: garbled entry for tensor \'a.weight\' in the metadata: {{"dtype": "F16", '
        '"shape": ["6", 4], "raw_shape": [5, 4]}',
        "The file is damaged; download it again.",
    )
