"""Sharded checkpoint writer: the plan is known up front, bytes are streamed tensor by tensor.

Because every name, dtype and shape is planned before the first byte is written, each shard's
safetensors header (or `.bin` pickle) can be written first and the tensors appended as they are
computed; no shard is ever held in memory. Same plan and tensors -> byte-identical files.
"""

from __future__ import annotations

import functools
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO, Protocol

import torch

from weightkit.dtypes import TORCH_TO_SAFETENSORS, to_header
from weightkit.errors import InputError
from weightkit.io.raw_bytes import Sink, tensor_bytes, write_chunked
from weightkit.io.reader import open_checkpoint
from weightkit.io.tensor_info import TensorInfo
from weightkit.io.torch_file import TorchZipWriter
from weightkit.manifest import MANIFEST_NAME, ManifestEntry
from weightkit.options import FORMATS, check_choice

# each checkpoint format's file names: weights prefix, suffix, index
LAYOUTS = {
    "safetensors": ("model", ".safetensors", "model.safetensors.index.json"),
    "bin": ("pytorch_model", ".bin", "pytorch_model.bin.index.json"),
}
DEFAULT_SHARD_BYTES = 5 * 10**9  # WriteOptions' 5GB


def check_dtypes(plan: list[TensorInfo]) -> None:
    """Refuse up front a tensor no output can hold: both formats, and the tensor manifests, take
    the dtypes safetensors defines (a `.bin` input may hold others)."""
    for t in plan:
        if t.dtype not in TORCH_TO_SAFETENSORS:
            raise InputError(
                f"tensor {t.name!r} is {t.dtype}, which weightkit cannot write: it is not a "
                "safetensors dtype, and weightkit's outputs and tensor manifests are named in "
                "those",
                "Convert that tensor to another dtype with torch first.",
            )


def plan_shards(plan: list[TensorInfo], max_shard_size: int) -> list[list[TensorInfo]]:
    """Greedy, in plan order: a shard closes when the next tensor would push it past the limit."""
    shards: list[list[TensorInfo]] = [[]]
    size = 0
    for t in plan:
        if shards[-1] and size + t.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_file_names(fmt: str, n: int) -> list[str]:
    """HF's names: model.safetensors alone, model-00001-of-00003.safetensors when sharded."""
    prefix, suffix, _ = LAYOUTS[fmt]
    return numbered_names(prefix, suffix, n)


def numbered_names(prefix: str, suffix: str, n: int) -> list[str]:
    """PREFIX+SUFFIX alone, PREFIX-00001-of-0000N+SUFFIX for each of n > 1 files."""
    if n == 1:
        return [f"{prefix}{suffix}"]
    return [f"{prefix}-{i + 1:05d}-of-{n:05d}{suffix}" for i in range(n)]


class ShardFiles:
    """The planned tensors, in plan order, written into `folder` as files of at most
    `max_shard_size` tensor bytes each (`shards`), named by `name_files(number of files)`.

    Each file is written as `NAME.tmp`, flushed to disk and renamed when complete, then
    `on_shard_done(index)` is called; after `resume(done)`, the files listed (finished by an
    earlier, killed run) are skipped, and their tensors must not be written again. Subclasses
    write a file's bytes between `_begin_shard` and `_end_shard`.
    """

    def __init__(
        self,
        folder: Path,
        plan: list[TensorInfo],
        max_shard_size: int,
        name_files: Callable[[int], list[str]],
        on_shard_done: Callable[[int], None] | None,
    ) -> None:
        self.folder = folder
        self.shards = plan_shards(plan, max_shard_size)
        self.file_names = name_files(len(self.shards))
        self._on_shard_done = on_shard_done
        self.resume(set())
        self._shard = -1  # index into self.shards of the shard being written

    def resume(self, done: set[int]) -> None:
        """Skip the files in `done` (indexes into `shards`): a killed run finished them."""
        self.done = set(done)
        self._todo = [i for i in range(len(self.shards)) if i not in self.done]

    @property
    def total_size(self) -> int:
        """Bytes of all planned tensors, as computed (what progress counts)."""
        return sum(t.nbytes for shard in self.shards for t in shard)

    def _begin_shard(self) -> Path:
        """Move on to the next shard still to write; returns the path to write it to."""
        self._shard = self._todo.pop(0)
        return self._tmp_path(self._shard)

    def _end_shard(self) -> None:
        """The current shard's file is complete and closed: onto the disk, then its name."""
        tmp = self._tmp_path(self._shard)
        with open(tmp, "rb+") as f:  # the bytes reach the disk before the name says "done"
            os.fsync(f.fileno())
        os.rename(tmp, self.folder / self.file_names[self._shard])
        self.done.add(self._shard)
        if self._on_shard_done is not None:
            self._on_shard_done(self._shard)

    def _check_complete(self) -> None:
        if len(self.done) != len(self.shards):
            raise RuntimeError("writer closed before every planned tensor was written")

    def _tmp_path(self, shard: int) -> Path:
        return self.folder / (self.file_names[shard] + ".tmp")


class ShardWriter(ShardFiles):
    """Write the planned tensors, in plan order, into `folder` as checkpoint shards in `fmt`
    (resuming as ShardFiles says)."""

    def __init__(
        self,
        folder: Path,
        plan: list[TensorInfo],
        fmt: str = "safetensors",
        max_shard_size: int = DEFAULT_SHARD_BYTES,
        on_shard_done: Callable[[int], None] | None = None,
    ) -> None:
        check_choice(fmt, FORMATS, "format")
        super().__init__(
            folder, plan, max_shard_size, functools.partial(shard_file_names, fmt), on_shard_done
        )
        self.fmt = fmt
        self.index_name = LAYOUTS[fmt][2]
        self._pos = 0  # index of the next tensor inside the shard being written
        self._file: BinaryIO | TorchZipWriter | None = None  # the shard being written
        self._stream: IO[bytes] | None = None  # .bin: the zip record of the tensor being written
        self._row = 0  # next row of the tensor being written in pieces (0: none begun)

    @property
    def bytes_written(self) -> int:
        """The tensor bytes of the output, as the summary counts them (headers aside)."""
        return self.total_size

    def write(self, name: str, tensor: torch.Tensor, rows: tuple[int, int] | None = None) -> None:
        """Append a planned tensor, or with `rows` = (start, stop) its rows [start, stop): the
        pieces of a tensor come in order, and the next tensor starts once its last row is in."""
        if self._row == 0:
            if self._file is None or self._pos == len(self.shards[self._shard]):
                self._next_shard()
        planned = self.shards[self._shard][self._pos]
        start, stop = rows if rows is not None else (0, planned.shape[0] if planned.shape else 0)
        shape = (stop - start, *planned.shape[1:]) if rows is not None else planned.shape
        if (
            planned.name != name
            or tuple(tensor.shape) != shape
            or tensor.dtype != planned.dtype
            or start != self._row
        ):
            got = f" rows {start}..{stop}" if rows is not None else ""
            raise RuntimeError(
                f"writer got {name}{got} {tuple(tensor.shape)} {tensor.dtype}, planned "
                f"{planned.name} {planned.shape} {planned.dtype} from row {self._row}"
            )
        write_chunked(self._sink(name, planned.nbytes), tensor_bytes(tensor))
        self._row = stop
        if rows is None or stop == planned.shape[0]:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
            self._row = 0
            self._pos += 1

    def _sink(self, name: str, nbytes: int) -> Sink:
        """Where the bytes of tensor `name` go: the safetensors file, or in a .bin the tensor's
        zip record (opened at its first piece)."""
        if self._file is None:
            raise RuntimeError(f"writer got {name} with no shard open")
        if not isinstance(self._file, TorchZipWriter):
            return self._file
        if self._stream is None:
            self._stream = self._file.open_tensor(name, nbytes)
        return self._stream

    def close(self) -> list[Path]:
        """Finish the last shard and write the index; returns the files written."""
        if self._file is not None:
            self._finish_shard(self._file)
        self._check_complete()
        written = [self.folder / f for f in self.file_names]
        if len(self.file_names) > 1:
            weight_map = {
                t.name: self.file_names[i] for i, shard in enumerate(self.shards) for t in shard
            }
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": dict(sorted(weight_map.items())),
            }
            path = self.folder / self.index_name
            path.write_text(json.dumps(index, indent=2) + "\n")
            written.append(path)
        return written

    def _next_shard(self) -> None:
        if self._file is not None:
            self._finish_shard(self._file)
        path = self._begin_shard()
        self._pos = 0
        shard = self.shards[self._shard]
        if self.fmt == "safetensors":
            self._file = open(path, "wb")
            self._file.write(
                safetensors_header(
                    [(t.name, *to_header(t.dtype, t.shape), t.nbytes) for t in shard],
                    {"format": "pt"},
                )
            )
        else:
            self._file = TorchZipWriter(path, [(t.name, t.dtype, t.shape) for t in shard])

    def _finish_shard(self, file: BinaryIO | TorchZipWriter) -> None:
        if self._pos != len(self.shards[self._shard]):
            missing = self.shards[self._shard][self._pos].name
            raise RuntimeError(f"shard closed before tensor {missing} was written")
        file.close()
        self._file = None
        self._end_shard()


def safetensors_header(
    tensors: list[tuple[str, str, list[int], int]], metadata: dict[str, str], room: int = 0
) -> bytes:
    """The header of a safetensors file holding `tensors` (name, safetensors dtype, shape, bytes)
    one after another: padded with spaces to 8-byte aligned data, or to exactly `room` bytes
    (a header reserved before the sizes are known, rewritten in place once they are)."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    body = json.dumps(header, separators=(",", ":")).encode()
    size = room - 8 if room else len(body) + (-len(body) % 8)
    if len(body) > size:
        raise RuntimeError("safetensors header outgrew the room reserved for it")
    return struct.pack("<Q", size) + body + b" " * (size - len(body))


class FilesWriter(Protocol):
    """What write_checkpoint's outline asks of the writer of a run's files (a ShardWriter, or a
    command's own kind): the planned files, resumed after a kill, written tensor by tensor."""

    shards: list[list[TensorInfo]]
    file_names: list[str]

    @property
    def total_size(self) -> int: ...
    @property
    def bytes_written(self) -> int: ...
    def resume(self, done: set[int]) -> None: ...
    def write(
        self, name: str, tensor: torch.Tensor, rows: tuple[int, int] | None = None
    ) -> None: ...
    def close(self) -> list[Path]: ...


class FinishedFile(Protocol):
    """A finished file of a killed run, whose tensors' entries are re-checked on resume."""

    def manifest_entry(self, name: str) -> ManifestEntry: ...


class CheckpointFiles:
    """The files a run's tensors become (write_checkpoint's outline asks it for a writer, which
    names them, and for a finished file to re-check on resume): checkpoint shards in `fmt`. A
    command with a container of its own (a lossless diff) passes its own kind."""

    manifest_name = MANIFEST_NAME  # where the manifest of the computed tensors goes

    def __init__(self, fmt: str) -> None:
        self.fmt = check_choice(fmt, FORMATS, "format")
        self.format = fmt  # what the result says the files are
        self.key = fmt  # what sets runs into these files apart (in the resume journal's key)

    def writer(
        self,
        folder: Path,
        plan: list[TensorInfo],
        max_shard_size: int,
        on_shard_done: Callable[[int], None],
    ) -> FilesWriter:
        return ShardWriter(folder, plan, self.fmt, max_shard_size, on_shard_done)

    def open(self, path: Path) -> FinishedFile:
        """A finished file, whose `manifest_entry(name)` is re-checked against the journal."""
        return open_checkpoint(path)
