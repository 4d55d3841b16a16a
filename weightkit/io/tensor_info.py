"""What a checkpoint says about a tensor before any of its bytes are read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


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


def read_exact(f, offset: int, nbytes: int, path: Path, name: str) -> torch.Tensor:
    """Read `nbytes` at `offset` into a fresh uint8 tensor; a short read means a truncated file."""
    buf = torch.empty(nbytes, dtype=torch.uint8)
    if nbytes:
        f.seek(offset)
        view = memoryview(buf.numpy())
        got = 0
        while got < nbytes:
            n = f.readinto(view[got:])
            if not n:
                from weightkit.errors import InputError

                raise InputError(
                    f"{path}: file is truncated: tensor {name!r} needs bytes "
                    f"{offset}..{offset + nbytes} but the file ends at {offset + got}",
                    "Download the file again (weightkit verify can tell which files are damaged).",
                )
            got += n
    return buf


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's raw little-endian bytes, without a copy when it is already contiguous on CPU."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())
