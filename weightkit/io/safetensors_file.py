"""One safetensors file: header parsed and checked up front, each tensor read on demand.

Bytes are read with one positioned read into a fresh buffer rather than through an mmap of the
whole file, so resident memory stays one tensor deep however large the shard is.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from weightkit.dtypes import from_header
from weightkit.errors import InputError
from weightkit.io.tensor_info import TensorInfo, read_exact

_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries, self._data_start = _parse_header(path)
        self.infos = {
            name: TensorInfo(name, *from_header(e["dtype"], [int(d) for d in e["shape"]], name),
                             path)
            for name, e in self._entries.items()
        }

    def read(self, name: str) -> torch.Tensor:
        info = self.infos[name]
        begin, end = self._entries[name]["data_offsets"]
        with open(self.path, "rb", buffering=0) as f:
            raw = read_exact(f, self._data_start + begin, end - begin, self.path, name)
        return raw.view(info.dtype).reshape(info.shape)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the tensor's first dimension: one positioned read."""
        info = self.infos[name]
        row = info.nbytes // info.shape[0] if info.shape and info.shape[0] else 0
        begin = self._entries[name]["data_offsets"][0] + start * row
        with open(self.path, "rb", buffering=0) as f:
            raw = read_exact(f, self._data_start + begin, (stop - start) * row, self.path, name)
        return raw.view(info.dtype).reshape(stop - start, *info.shape[1:])


def _parse_header(path: Path) -> tuple[dict[str, dict], int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise InputError(
                f"{path}: garbled safetensors header (says {n} header bytes, file has {size})",
                "The file is damaged or not safetensors; download it again.",
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: garbled safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: garbled safetensors header: not a JSON object")
    header.pop("__metadata__", None)
    data_len = size - 8 - n
    entries: list[tuple[int, str, dict]] = []
    for name, e in header.items():
        try:
            begin, end = e["data_offsets"]
            dtype, shape = from_header(e["dtype"], [int(d) for d in e["shape"]],
                                       f"{path}: tensor {name!r}")
        except (KeyError, TypeError, ValueError):
            raise InputError(
                f"{path}: garbled safetensors header entry for tensor {name!r}: {e!r}"
            ) from None
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * dtype.itemsize or begin < 0:
            raise InputError(
                f"{path}: tensor {name!r} has {end - begin} bytes for shape {tuple(e['shape'])} "
                f"of {e['dtype']}; the header is damaged"
            )
        if end > data_len:
            raise InputError(
                f"{path}: file is truncated: tensor {name!r} ends at byte {end} of the data, "
                f"but the file holds {data_len}",
                "Download the file again (weightkit verify can tell which files are damaged).",
            )
        entries.append((begin, name, e))
    entries.sort(key=lambda x: (x[0], x[1]))  # file order: read sequentially
    return {name: e for _, name, e in entries}, 8 + n
