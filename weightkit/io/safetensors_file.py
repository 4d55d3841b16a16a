"""One safetensors file: header parsed and checked up front, each tensor read on demand.

The header is checked as the safetensors format demands (the reference crate's rules): at most
100 MB of UTF-8 JSON, an object whose optional `__metadata__` maps strings to strings and whose
every other entry has a known `dtype`, a `shape` of non-negative integers and `data_offsets`
[begin, end] sized for them; taken in order of their offsets the tensors start at 0, follow one
another without gap or overlap, and end exactly where the file does.

Bytes are read with one positioned read into a fresh buffer rather than through an mmap of the
whole file, so resident memory stays one tensor deep however large the shard is.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from weightkit.dtypes import FORMAT_DTYPES, from_header
from weightkit.errors import InputError
from weightkit.io.raw_bytes import read_exact
from weightkit.io.sniff import DOWNLOAD_AGAIN, SAFETENSORS, TRUNCATED_HINT, not_weights
from weightkit.io.tensor_info import TensorInfo

_MAX_HEADER = 100_000_000  # the safetensors crate refuses longer headers


class SafetensorsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.infos, self._offsets, self._data_start = _parse_header(path)

    def read(self, name: str) -> torch.Tensor:
        info = self.infos[name]
        begin, end = self._offsets[name]
        with open(self.path, "rb", buffering=0) as f:
            raw = read_exact(f, self._data_start + begin, end - begin, self.path, name)
        return raw.view(info.dtype).reshape(info.shape)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the tensor's first dimension: one positioned read."""
        info = self.infos[name]
        row = info.nbytes // info.shape[0] if info.shape and info.shape[0] else 0
        begin = self._offsets[name][0] + start * row
        with open(self.path, "rb", buffering=0) as f:
            raw = read_exact(f, self._data_start + begin, (stop - start) * row, self.path, name)
        return raw.view(info.dtype).reshape(stop - start, *info.shape[1:])


def _parse_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, tuple[int, int]], int]:
    """(infos in file order, each tensor's [begin, end) in the data, where the data starts)."""
    header, n, size = _read_header(path)
    meta = header.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise _garbled(path, f"__metadata__ is {_short(meta)}, not a map of strings to strings")
    entries = sorted(
        (_entry(path, name, e) for name, e in header.items()), key=lambda x: (x[2], x[3], x[0])
    )  # by data_offsets, as the format orders
    data_len = size - 8 - n
    end_of_previous, previous = 0, None
    for name, _, begin, end in entries:
        if begin != end_of_previous:
            where = (
                f"{previous!r} ends at byte {end_of_previous}"
                if previous
                else "the data starts at byte 0"
            )
            raise InputError(
                f"{path}: tensor {name!r} starts at byte {begin} of the data, but "
                f"{where}; the header is damaged",
                DOWNLOAD_AGAIN,
            )
        if end > data_len:
            raise InputError(
                f"{path}: file is truncated: tensor {name!r} ends at byte {end} of the data, "
                f"but the file holds {data_len}",
                TRUNCATED_HINT,
            )
        end_of_previous, previous = end, name
    if end_of_previous != data_len:
        raise InputError(
            f"{path}: {data_len - end_of_previous} byte(s) after the last tensor's "
            "data that the header does not account for; the file is damaged",
            DOWNLOAD_AGAIN,
        )
    in_order = sorted(entries, key=lambda x: (x[2], x[0]))  # read sequentially
    return (
        {name: info for name, info, _, _ in in_order},
        {name: (begin, end) for name, _, begin, end in entries},
        8 + n,
    )


def _read_header(path: Path) -> tuple[dict, int, int]:
    """(the header's JSON object, its length, the file's size)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise not_weights(path, SAFETENSORS, f"not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise not_weights(
                path,
                SAFETENSORS,
                f"garbled safetensors header (says {n} header bytes, file has {size})",
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        if not raw.lstrip().startswith(b"{"):
            raise not_weights(path, SAFETENSORS, "not a safetensors file") from None
        raise _garbled(path, str(e) or type(e).__name__) from None
    if not isinstance(header, dict):
        raise _garbled(path, "not a JSON object")
    return header, n, size


def _entry(path: Path, name: str, e: object) -> tuple[str, TensorInfo, int, int]:
    """(name, info, begin, end) of one header entry, every field checked."""
    if not isinstance(e, dict):
        raise _garbled(path, f"the entry for tensor {name!r} is {_short(e)}, not an object")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in e:
            raise _garbled(path, f"the entry for tensor {name!r} has no {field}")
    if not isinstance(e["dtype"], str) or e["dtype"] not in FORMAT_DTYPES:
        raise InputError(
            f"{path}: tensor {name!r} has dtype {_short(e['dtype'])}, which the safetensors "
            f"format does not define (it defines {', '.join(FORMAT_DTYPES)})",
            "The header is damaged (download the file again), or the file holds a dtype this "
            "weightkit does not know.",
        )
    shape = parse_shape(e["shape"])
    offsets = parse_shape(e["data_offsets"])
    if shape is None:
        raise _garbled(
            path,
            f"tensor {name!r} has shape {_short(e['shape'])}, not a list of non-negative integers",
        )
    dtype, shape = from_header(e["dtype"], list(shape), f"{path}: tensor {name!r}")
    if offsets is None or len(offsets) != 2 or offsets[1] < offsets[0]:
        raise _garbled(
            path,
            f"tensor {name!r} has data_offsets {_short(e['data_offsets'])}, "
            "not [begin, end] with 0 <= begin <= end",
        )
    info = TensorInfo(name, dtype, shape, path)
    begin, end = offsets
    if end - begin != info.nbytes:
        raise InputError(
            f"{path}: tensor {name!r} has {end - begin} bytes for shape {shape} of "
            f"{e['dtype']}; the header is damaged",
            DOWNLOAD_AGAIN,
        )
    return name, info, begin, end


def parse_shape(value: object) -> tuple[int, ...] | None:
    """A JSON list of non-negative integers as a tuple; None for anything else."""
    if not isinstance(value, list) or not all(type(d) is int and d >= 0 for d in value):
        return None
    return tuple(value)


def _garbled(path: Path, what: str) -> InputError:
    return InputError(f"{path}: garbled safetensors header: {what}", DOWNLOAD_AGAIN)


def _short(value: object, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."
