"""The one record of a tensor before any of its bytes are read (`TensorInfo`: what a header
says, what a command plans to write), and a listing of such records by name."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

# Largest piece of a tensor read, computed or hashed at once when it can go row by row: small
# enough that the pipeline's queues, not its byte budget, bound what is in flight (so peak
# memory is the same at 0.3B and 3B: 32 MiB pieces gave 0.45 / 0.58 / 0.60 GiB, 16 MiB 0.45 /
# 0.45 / 0.45), large enough that per-piece costs (a read call, a queue hop) do not show.
PIECE_BYTES = 16 * 2**20


def numel(shape: Iterable[int]) -> int:
    """The number of elements of a tensor of `shape` (1 for a scalar's ())."""
    return math.prod(shape)


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's name, dtype and shape; `file`: where it is stored (None: a tensor planned for
    an output, or computed)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path | None = None

    @property
    def numel(self) -> int:
        return numel(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def row_ranges(self, max_bytes: int, multiple: int = 1) -> list[tuple[int, int]]:
        """[start, stop) ranges covering the tensor's rows (its first dimension), each at most
        `max_bytes` (but at least `multiple` rows), starting at multiples of `multiple`."""
        rows = self.shape[0]
        row_bytes = self.nbytes // rows if rows else 0
        step = max(multiple, max_bytes // max(row_bytes, 1) // multiple * multiple)
        return [(a, min(a + step, rows)) for a in range(0, rows, step)]


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
