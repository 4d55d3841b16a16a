"""The lossless diff container: safetensors files of zstd frames, one per tuned tensor.

A lossless diff folder (written by `weightkit diff --lossless`) holds

    lossless-diff.safetensors           or lossless-diff-00001-of-0000N.safetensors, …
    weightkit.target-manifest.json      the tuned model's tensor manifest (recover checks it)
    config.json, tokenizer files, …     copied from the tuned model

Each `lossless-diff*.safetensors` file is an ordinary safetensors file (any safetensors reader
opens it). Its tensor NAME is a 1-D U8 tensor holding one zstd frame: the encoded tensor NAME of
the tuned model (the encoding is described in weightkit.ops.lossless). Its `__metadata__`:

    "format":   "weightkit.lossless-diff"
    "version":  "1"
    "encoding": "sub-zigzag-planes-zstd"
    "tensors":  JSON text: {NAME: {"dtype": "BF16", "shape": [32001, 4096],
                                   "raw_shape": [32000, 4096]}, …}

dtype and shape are the tuned tensor's, raw_shape the raw tensor's it was made against (they
differ for a vocabulary extension). Tensors are split into files by their decoded size, as
checkpoints are sharded, so each file is at most `max_shard_size`.

The header comes first but the frames' sizes are known only once they are compressed: the writer
reserves a header with room for the largest numbers, streams the frames, then rewrites the header
padded with spaces (which safetensors allows). One pass, one frame in memory at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError, safe_open

from weightkit.dtypes import FORMAT_DTYPES, from_header, to_header
from weightkit.errors import InputError
from weightkit.io.safetensors_file import SafetensorsFile, parse_shape
from weightkit.io.sniff import DOWNLOAD_AGAIN
from weightkit.io.tensor_info import TensorInfo
from weightkit.io.writer import (
    DEFAULT_SHARD_BYTES,
    ShardFiles,
    numbered_names,
    safetensors_header,
)

PREFIX = "lossless-diff"
LOSSLESS_FORMAT = PREFIX  # what a write's result says its files are
FORMAT = "weightkit.lossless-diff"
VERSION = "1"
ENCODING = "sub-zigzag-planes-zstd"
_ROOM = 10**15 - 1  # placeholder for every size while the header is reserved: up to 1 PB


def lossless_files(path: str | Path) -> list[Path]:
    """The lossless diff files at `path` (a diff folder or one such file); [] for other diffs."""
    path = Path(path)
    if path.is_file():
        return [path] if path.name.startswith(PREFIX) else []
    return sorted(path.glob(f"{PREFIX}*.safetensors")) if path.is_dir() else []


def is_lossless_diff(path: str | Path) -> bool:
    return bool(lossless_files(path))


def file_names(n: int) -> list[str]:
    """The names of a lossless diff in n files."""
    return numbered_names(PREFIX, ".safetensors", n)


class LosslessDiffWriter(ShardFiles):
    """Write compressed tensors, in plan order, into `folder`; a killed run's finished files
    are kept, as ShardFiles says."""

    def __init__(
        self,
        folder: Path,
        plan: list[TensorInfo],
        raw_shapes: dict[str, tuple[int, ...]],
        max_shard_size: int = DEFAULT_SHARD_BYTES,
        on_shard_done: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(folder, plan, max_shard_size, file_names, on_shard_done)
        self.raw_shapes = raw_shapes
        self._sizes: list[int] = []  # frame sizes written to the current file
        self._file: BinaryIO | None = None  # the file being written
        self._room = 0  # header bytes reserved in the current file

    @property
    def bytes_written(self) -> int:
        """The size of the files finished so far (all of them once closed)."""
        return sum((self.folder / self.file_names[i]).stat().st_size for i in self.done)

    def write(self, name: str, payload: bytes) -> None:
        file = self._file
        if file is None or len(self._sizes) == len(self.shards[self._shard]):
            file = self._next_file()
        expected = self.shards[self._shard][len(self._sizes)].name
        if name != expected:
            raise RuntimeError(f"lossless diff writer got {name}, planned {expected}")
        file.write(payload)
        self._sizes.append(len(payload))

    def close(self) -> list[Path]:
        """Finish the last file; returns the files written."""
        self._finish_file()
        self._check_complete()
        return [self.folder / f for f in self.file_names]

    def _next_file(self) -> BinaryIO:
        """Finish the current file and start the next; returns it."""
        self._finish_file()
        path = self._begin_shard()
        self._sizes = []
        self._file = open(path, "wb")
        reserved = self._header([_ROOM] * len(self.shards[self._shard]))
        self._room = len(reserved)
        self._file.write(reserved)
        return self._file

    def _finish_file(self) -> None:
        if self._file is None:
            return
        if len(self._sizes) != len(self.shards[self._shard]):
            raise RuntimeError("lossless diff file closed before all its tensors were written")
        header = self._header(self._sizes, self._room)
        self._file.seek(0)
        self._file.write(header)
        self._file.close()
        self._file = None
        self._end_shard()

    def _header(self, sizes: list[int], room: int = 0) -> bytes:
        """The current file's header for frames of `sizes`, padded to `room` bytes if given."""
        shard = self.shards[self._shard]
        tensors = {}
        for t in shard:
            dtype, shape = to_header(t.dtype, t.shape)
            tensors[t.name] = {
                "dtype": dtype,
                "shape": shape,
                "raw_shape": to_header(t.dtype, self.raw_shapes[t.name])[1],
            }
        metadata = {
            "format": FORMAT,
            "version": VERSION,
            "encoding": ENCODING,
            "tensors": json.dumps(tensors, separators=(",", ":")),
        }
        frames = [(t.name, "U8", [size], size) for t, size in zip(shard, sizes, strict=True)]
        return safetensors_header(frames, metadata, room)


class LosslessDiffReader:
    """A lossless diff, listed like a checkpoint: `.infos` are the tuned tensors' (name, dtype,
    shape); `.read(name)` is the compressed payload (1-D uint8), read on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.label = str(self.path)
        self.files = lossless_files(self.path)
        if not self.files:
            raise InputError(f"{self.path}: no {PREFIX}*.safetensors files here")
        self.infos: dict[str, TensorInfo] = {}
        self.raw_shapes: dict[str, tuple[int, ...]] = {}
        self._where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            self._add_file(f)

    @property
    def folder(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    def info(self, name: str) -> TensorInfo:
        return self.infos[name]

    def where(self, name: str) -> str:
        return str(self.infos[name].file)

    def read(self, name: str) -> torch.Tensor:
        return self._where[name].read(name)

    def _add_file(self, path: Path) -> None:
        frames = SafetensorsFile(path)
        for name, e in _tensors(path).items():
            if name in self.infos:
                raise InputError(
                    f"{path}: tensor {name!r} is stored twice "
                    f"({self._where[name].path.name} and {path.name})"
                )
            if name not in frames.infos:
                raise InputError(
                    f"{path}: tensor {name!r} is listed but has no data", DOWNLOAD_AGAIN
                )
            fields = e if isinstance(e, dict) else {}
            dtype_name = fields.get("dtype")
            shape, raw_shape = (parse_shape(fields.get(k)) for k in ("shape", "raw_shape"))
            if (
                not isinstance(dtype_name, str)
                or dtype_name not in FORMAT_DTYPES
                or shape is None
                or raw_shape is None
            ):
                raise InputError(
                    f"{path}: garbled entry for tensor {name!r} in the metadata: "
                    f"{json.dumps(e)[:80]}",
                    DOWNLOAD_AGAIN,
                )
            where = f"{path}: tensor {name!r}"
            dtype, shape = from_header(dtype_name, list(shape), where)
            self.infos[name] = TensorInfo(name, dtype, shape, path)
            self.raw_shapes[name] = from_header(dtype_name, list(raw_shape), where)[1]
            self._where[name] = frames


def _tensors(path: Path) -> dict[str, dict]:
    """The `tensors` entry of a lossless diff file's metadata, its format checked."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, not {FORMAT!r}")
        if (meta.get("version"), meta.get("encoding")) != (VERSION, ENCODING):
            raise InputError(
                f"{path}: lossless diff version {meta.get('version')}, encoding "
                f"{meta.get('encoding')!r}; this weightkit reads version {VERSION} ({ENCODING})",
                "Upgrade weightkit.",
            )
        tensors = json.loads(meta["tensors"])
        if not isinstance(tensors, dict):
            raise ValueError("tensors is not a JSON object")
    except (SafetensorError, ValueError, KeyError) as e:
        raise InputError(f"{path}: not a weightkit lossless diff ({e})", DOWNLOAD_AGAIN) from None
    return tensors
