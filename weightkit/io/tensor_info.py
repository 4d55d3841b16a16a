"""What a checkpoint says about a tensor before any of its bytes are read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from weightkit.io.buffers import empty_bytes


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


class Listing:
    """The listing half of every source: its tensors' names, dtypes and shapes, by name."""

    infos: dict[str, TensorInfo]

    def __contains__(self, name: object) -> bool:
        return name in self.infos

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def __len__(self) -> int:
        return len(self.infos)

    def names(self) -> list[str]:
        return list(self.infos)

    def info(self, name: str) -> TensorInfo:
        return self.infos[name]

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.infos.values())


# Largest piece of a tensor read, computed or hashed at once when it can go row by row: small
# enough that the pipeline's queues, not its byte budget, bound what is in flight (so peak
# memory is the same at 0.3B and 3B: 32 MiB pieces gave 0.45 / 0.58 / 0.60 GiB, 16 MiB 0.45 /
# 0.45 / 0.45), large enough that per-piece costs (a read call, a queue hop) do not show.
PIECE_BYTES = 16 * 2**20


def row_ranges(rows: int, row_bytes: int, max_bytes: int, multiple: int = 1
               ) -> list[tuple[int, int]]:
    """[start, stop) ranges covering `rows` rows, each at most `max_bytes` (but at least
    `multiple` rows), starting at multiples of `multiple`."""
    step = max(multiple, max_bytes // max(row_bytes, 1) // multiple * multiple)
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


def read_exact(f, offset: int, nbytes: int, path: Path, name: str) -> torch.Tensor:
    """Read `nbytes` at `offset` into a uint8 buffer; a short read means a truncated file."""
    buf = empty_bytes(nbytes)
    if nbytes:
        f.seek(offset)
        view = memoryview(buf.numpy())
        got = 0
        while got < nbytes:
            n = f.readinto(view[got:])
            if not n:
                from weightkit.errors import InputError
                from weightkit.io.sniff import TRUNCATED_HINT

                raise InputError(
                    f"{path}: file is truncated: tensor {name!r} needs bytes "
                    f"{offset}..{offset + nbytes} but the file ends at {offset + got}",
                    TRUNCATED_HINT,
                )
            got += n
    return buf


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's raw little-endian bytes, without a copy when it is already contiguous on CPU."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


# The kernel here takes one huge write() ten times slower than the same bytes in 1 MiB writes
# (measured: 390 MB/s vs 4.3 GB/s into the page cache), so writes are cut into chunks.
WRITE_CHUNK = 1 << 20


def write_chunked(f, data: memoryview) -> None:
    """Write all of `data` to a binary file object, 1 MiB at a time."""
    data = data.cast("B")
    for start in range(0, len(data), WRITE_CHUNK):
        f.write(data[start:start + WRITE_CHUNK])
