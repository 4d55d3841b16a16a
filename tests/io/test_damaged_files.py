"""Damaged weight files, one kind of damage at a time: each is one InputError naming the file (and
the tensor when there is one) with a hint, never another exception or a silent misread. The fuzz
(test_reader_fuzz.py) throws thousands of these; here each rule has its exact message."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from fuzz_mutations import (
    join_safetensors,
    rezip,
    sample,
    split_safetensors,
    torch_bytes,
    zip_entries,
)
from safetensors.torch import save

from weightkit.dtypes import FORMAT_DTYPES
from weightkit.errors import InputError
from weightkit.io.reader import open_checkpoint

DAMAGED = "The file is damaged; download it again."
STATE = {
    "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
    "b": torch.arange(4, dtype=torch.int16),
}


def refused(path: Path, data: bytes) -> InputError:
    path.write_bytes(data)
    with pytest.raises(InputError) as e:
        ckpt = open_checkpoint(path)
        for name in ckpt.names():
            ckpt.read(name)
    return e.value


# ---------------------------------------------------------------- torch zip


def with_record(data: bytes, name: str, payload: bytes | None) -> bytes:
    """The zip with record `name` (the part after "archive/") replaced, or dropped if None."""
    entries = [(n, payload if n == f"archive/{name}" else p) for n, p in zip_entries(data)]
    return rezip([(n, p) for n, p in entries if p is not None])


def test_a_missing_storage_record_names_the_tensor(tmp_path):
    e = refused(tmp_path / "m.bin", with_record(torch_bytes(STATE), "data/1", None))
    assert (e.message, e.hint) == (
        f"{tmp_path / 'm.bin'}: tensor 'b': its storage record archive/data/1 is missing from "
        "the zip",
        DAMAGED,
    )


def test_a_storage_record_of_the_wrong_size_is_refused(tmp_path):
    data = with_record(torch_bytes(STATE), "data/0", bytes(25))
    e = refused(tmp_path / "m.bin", data)
    assert (e.message, e.hint) == (
        f"{tmp_path / 'm.bin'}: tensor 'a': its storage record archive/data/0 holds 25 bytes, "
        "but the pickle says 24",
        DAMAGED,
    )


def test_a_pickle_that_ends_early_is_refused(tmp_path):
    data = torch_bytes(STATE)
    pickled = dict(zip_entries(data))["archive/data.pkl"]
    e = refused(tmp_path / "m.bin", with_record(data, "data.pkl", pickled[:-1]))
    assert e.message == (
        f"{tmp_path / 'm.bin'}: refused to load: the pickle inside is not plain "
        "tensors, or it is damaged (EOFError: no message)"
    )
    assert e.hint.startswith("weightkit never executes pickled code. Download the file again;")


def test_a_pickle_with_a_wrong_crc_is_refused(tmp_path):
    data = bytearray(torch_bytes(STATE))
    data[data.index(dict(zip_entries(data))["archive/data.pkl"]) + 10] ^= 0x01
    e = refused(tmp_path / "m.bin", bytes(data))
    assert (e.message, e.hint) == (
        f"{tmp_path / 'm.bin'}: damaged PyTorch zip checkpoint: Bad CRC-32 for file "
        "'archive/data.pkl'",
        DAMAGED,
    )


def test_a_record_name_that_is_not_utf8_is_refused(tmp_path):
    data = torch_bytes(STATE)
    at = data.rindex(b"archive/byteorder")  # in the central directory
    e = refused(tmp_path / "m.bin", data[: at + 8] + b"\xff" + data[at + 9 :])
    assert (e.message, e.hint) == (
        f"{tmp_path / 'm.bin'}: damaged PyTorch zip checkpoint: the zip directory at its end is "
        "missing or garbled (a truncated download?)",
        DAMAGED,
    )


def test_a_garbled_local_header_offset_is_refused(tmp_path):
    data = bytearray(torch_bytes(STATE))
    at = data.rindex(b"archive/data/0") - 46 + 42  # the entry's local header offset
    data[at : at + 4] = struct.pack("<I", 0xFFFF_FFF0)
    e = refused(tmp_path / "m.bin", bytes(data))
    assert e.message == (
        f"{tmp_path / 'm.bin'}: damaged PyTorch zip checkpoint: the local "
        "header of record archive/data/0 is damaged"
    )


def test_a_big_endian_file_is_refused_not_misread(tmp_path):
    e = refused(tmp_path / "m.bin", with_record(torch_bytes(STATE), "byteorder", b"big"))
    assert (e.message, e.hint) == (
        f"{tmp_path / 'm.bin'}: a big-endian checkpoint, which weightkit does not read",
        "Load and re-save it with torch on a little-endian machine, or get a safetensors copy.",
    )


def test_records_torch_needs_are_checked(tmp_path):
    data = torch_bytes(STATE)
    e = refused(tmp_path / "m.bin", with_record(data, "version", None))
    assert (
        e.message == f"{tmp_path / 'm.bin'}: damaged PyTorch zip checkpoint: it has no "
        "version record"
    )
    e = refused(tmp_path / "m.bin", with_record(data, "byteorder", b"littl"))
    assert (
        e.message == f"{tmp_path / 'm.bin'}: damaged PyTorch zip checkpoint: its byteorder "
        "record is b'littl', not little or big"
    )


@pytest.mark.parametrize(
    ("state", "says"),
    [
        ({1: torch.zeros(2)}, "entry 1 has a name of type int, not a string"),
        ({"a": [torch.zeros(2)]}, "entry 'a' is a list, not a tensor"),
        (
            {"a": torch.eye(2).to_sparse()},
            "tensor 'a' is a torch.sparse_coo tensor, which weightkit does not read",
        ),
    ],
)
def test_what_is_not_a_plain_tensor_is_named(tmp_path, state, says):
    e = refused(tmp_path / "m.bin", torch_bytes(state))
    assert e.message == f"{tmp_path / 'm.bin'}: {says}"


# ---------------------------------------------------------------- safetensors


def with_header(change) -> bytes:
    header, body = split_safetensors(save(STATE))
    change(header)
    return join_safetensors(header, body)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            lambda h: h["a"].update(data_offsets=["0", "24"]),
            "garbled safetensors header: tensor 'a' has data_offsets "
            '["0", "24"], not [begin, end] with 0 <= begin <= end',
        ),
        (
            lambda h: h["a"].update(shape=[2.0, 3]),
            "garbled safetensors header: tensor 'a' has shape [2.0, 3], not a list of non-negative "
            "integers",
        ),
        (
            lambda h: h["a"].update(shape=[True, 3]),
            "garbled safetensors header: tensor 'a' has shape [true, 3], "
            "not a list of non-negative integers",
        ),
        (
            lambda h: h["a"].update(dtype="F99"),
            "tensor 'a' has dtype \"F99\", which the safetensors format does not define "
            f"(it defines {', '.join(FORMAT_DTYPES)})",
        ),
        (
            lambda h: h.update(__metadata__={"format": 1}),
            'garbled safetensors header: __metadata__ is {"format": 1}, not a map of strings to '
            "strings",
        ),
        (
            lambda h: h.update(a=[0, 24]),
            "garbled safetensors header: the entry for tensor 'a' is [0, 24], not an object",
        ),
        (
            lambda h: h["b"].pop("shape"),
            "garbled safetensors header: the entry for tensor 'b' has no shape",
        ),
    ],
)
def test_safetensors_header_fields_of_the_wrong_type(tmp_path, change, says):
    e = refused(tmp_path / "m.safetensors", with_header(change))
    assert e.message == f"{tmp_path / 'm.safetensors'}: {says}"
    assert e.hint is not None


def test_safetensors_offsets_must_tile_the_data_exactly(tmp_path):
    path = tmp_path / "m.safetensors"
    header, body = split_safetensors(save(STATE))
    assert (header["a"]["data_offsets"], header["b"]["data_offsets"]) == ([0, 24], [24, 32])

    def offsets(a: list[int], b: list[int], extra: bytes = b"") -> bytes:
        header["a"]["data_offsets"], header["b"]["data_offsets"] = a, b
        return join_safetensors(header, body + extra)

    e = refused(path, offsets([0, 24], [16, 24]))  # b overlaps a
    assert (
        e.message == f"{path}: tensor 'b' starts at byte 16 of the data, but 'a' ends at "
        "byte 24; the header is damaged"
    )
    e = refused(path, offsets([0, 24], [32, 40], bytes(8)))  # a gap of 8 bytes
    assert (
        e.message == f"{path}: tensor 'b' starts at byte 32 of the data, but 'a' ends at "
        "byte 24; the header is damaged"
    )
    e = refused(path, offsets([8, 32], [32, 40], bytes(8)))
    assert (
        e.message == f"{path}: tensor 'a' starts at byte 8 of the data, but the data starts "
        "at byte 0; the header is damaged"
    )
    e = refused(path, offsets([0, 24], [24, 32], bytes(3)))
    assert (e.message, e.hint) == (
        f"{path}: 3 byte(s) after the last tensor's data that the header does not account for; "
        "the file is damaged",
        DAMAGED,
    )


def test_empty_tensors_at_one_offset_are_fine(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(save({"e": torch.zeros(0), "f": torch.zeros(0, 3), "a": STATE["a"]}))
    ckpt = open_checkpoint(path)
    assert ckpt.read("f").shape == (0, 3) and torch.equal(ckpt.read("a"), STATE["a"])


def test_the_fuzz_samples_read_back_as_saved(tmp_path):
    """The undamaged samples the fuzz starts from read back exactly."""
    from fuzz_mutations import SAFETENSORS, TORCH, undamaged

    for fmt, name in ((SAFETENSORS, "s.safetensors"), (TORCH, "s.bin")):
        (tmp_path / name).write_bytes(sample(fmt))
        ckpt = open_checkpoint(tmp_path / name)
        expected = undamaged(fmt)
        assert sorted(ckpt.names()) == sorted(expected)
        for n, (dtype, shape, raw) in expected.items():
            t = ckpt.read(n)
            assert (t.dtype, tuple(t.shape)) == (dtype, shape)
            assert t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() == raw
