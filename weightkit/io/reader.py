"""A checkpoint on disk, one small interface over every layout weightkit reads.

Accepted: an HF model folder (single or sharded safetensors, or `pytorch_model*.bin`, with or
without an index), a folder of `consolidated.*.pth` or `adapter_model.*` files, or a single file.
Listing names, shapes and dtypes reads headers only; `read(name)` reads one tensor.
The source layer reads a `Checkpoint` as a `weightkit.sources.Source`, the interface of every
input (`weightkit.sources.source.StoredSource`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from weightkit.dtypes import safetensors_name
from weightkit.errors import InputError
from weightkit.io.raw_bytes import tensor_bytes
from weightkit.io.safetensors_file import SafetensorsFile
from weightkit.io.tensor_info import PIECE_BYTES, Listing, TensorInfo
from weightkit.io.torch_file import TorchFile
from weightkit.manifest import ManifestEntry

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TORCH_SUFFIXES = (".bin", ".pth", ".pt")  # torch.save zips
WEIGHT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
# a folder's weight files: the first pattern with a match wins (HF's and Meta's names first, so
# a stray training_args.bin beside the shards is not taken for one); one per suffix at least
_FOLDER_PATTERNS = (
    "*.safetensors",
    "pytorch_model*.bin",
    "consolidated.*.pth",
    *(f"*{s}" for s in TORCH_SUFFIXES),
)
_SUFFIX_LIST = ", ".join(f"*{s}" for s in WEIGHT_SUFFIXES)


class Checkpoint(Listing):
    """Tensors of one model, wherever they are stored; read one at a time."""

    def __init__(self, path: Path, files: list[Path]) -> None:
        self.path = path
        self.files = files
        self.label = str(path)
        self._backends = [_open_file(f) for f in files]
        self._where: dict[str, int] = {}
        self.infos: dict[str, TensorInfo] = {}
        for i, backend in enumerate(self._backends):
            for name, info in backend.infos.items():
                if name in self._where:
                    first = self.files[self._where[name]].name
                    raise InputError(
                        f"{path}: tensor {name!r} is stored twice ({first} and {files[i].name})",
                        "The checkpoint is inconsistent; download it again.",
                    )
                self._where[name] = i
                self.infos[name] = info

    def where(self, name: str) -> str:
        return str(self.infos[name].file)

    def read(self, name: str) -> torch.Tensor:
        """The tensor's values on the CPU, in its stored dtype, in a buffer of their own (no
        view of the file or of another tensor: it may be changed in place). Outside a pipeline
        run the buffer is newly allocated; inside one it comes from the run's pool
        (weightkit.io.buffers) and is reused once the pipeline has written the result: clone
        what must outlive that."""
        return self._backends[self._where[name]].read(name)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the tensor's first dimension, in a buffer of their own as
        `read` gives it (pooled inside a pipeline run)."""
        return self._backends[self._where[name]].read_rows(name, start, stop)

    def manifest_entry(self, name: str, piece_bytes: int = PIECE_BYTES) -> ManifestEntry:
        """The tensor's manifest entry, its bytes hashed a piece of rows at a time: memory stays
        at one piece however large the tensor is."""
        info = self.infos[name]
        if len(info.shape) == 0 or info.nbytes <= piece_bytes:
            return ManifestEntry.of(self.read(name))
        digest = hashlib.sha256()
        for start, stop in info.row_ranges(piece_bytes):
            digest.update(tensor_bytes(self.read_rows(name, start, stop)))
        return ManifestEntry(safetensors_name(info.dtype), info.shape, digest.hexdigest())

    @property
    def folder(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    def config(self) -> dict[str, Any] | None:
        return folder_config(self.folder)


def folder_config(folder: Path) -> dict[str, Any] | None:
    """The folder's config.json; None without one, {} when it is not a JSON object (a model
    whose config cannot be read has no settings weightkit could use)."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a checkpoint folder or file without reading any tensor data."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    return Checkpoint(path, weight_files(path))


def weight_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint, in a deterministic order."""
    if path.is_file():
        return [path]
    for index_name in INDEX_NAMES:
        index = path / index_name
        if index.exists():
            return _files_from_index(index)
    for pattern in _FOLDER_PATTERNS:
        found = sorted(p for p in path.glob(pattern) if p.is_file())
        if found:
            return found
    raise InputError(
        f"{path}: no weight files ({_SUFFIX_LIST}) in this folder",
        "Point at the folder that holds the model's weights.",
    )


def _files_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{index}: not a valid index file ({e})") from None
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise InputError(
            f"{index}: names shard {missing[0]} which is not in {index.parent}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            "Download the missing shards, or remove the stale index file.",
        )
    return [index.parent / n for n in names]


def _open_file(path: Path) -> SafetensorsFile | TorchFile:
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    if path.suffix in TORCH_SUFFIXES:
        return TorchFile(path)
    raise InputError(f"{path}: unknown weight file type (expected {_SUFFIX_LIST})")
