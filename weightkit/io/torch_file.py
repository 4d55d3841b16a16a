"""PyTorch's zip checkpoint format (`.bin`, `.pth`), read lazily and written streaming.

Reading: the pickle is replayed by torch's own weights_only unpickler (so a pickle that would run
code is refused, never executed) with storages stubbed on the meta device; that yields every
tensor's dtype, shape and byte range without reading any tensor data.

Writing: the pickle references one storage record per tensor; the records are then streamed into
the zip one tensor at a time, 64-byte aligned as torch.save does, so `torch.load(mmap=True)` works.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch._weights_only_unpickler as _wo

from weightkit.errors import InputError
from weightkit.io.tensor_info import TensorInfo, read_exact, write_chunked

_STORAGE_TYPES = {
    torch.float64: "DoubleStorage",
    torch.float32: "FloatStorage",
    torch.float16: "HalfStorage",
    torch.bfloat16: "BFloat16Storage",
    torch.int64: "LongStorage",
    torch.int32: "IntStorage",
    torch.int16: "ShortStorage",
    torch.int8: "CharStorage",
    torch.uint8: "ByteStorage",
    torch.bool: "BoolStorage",
    torch.complex64: "ComplexFloatStorage",
}
_ALIGN = 64


@dataclass(frozen=True)
class _Location:
    record: str  # zip entry holding the storage
    offset: int  # byte offset of the tensor inside that record
    stride: tuple[int, ...]


class TorchFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.infos: dict[str, TensorInfo] = {}
        self._locations: dict[str, _Location] = {}
        self._record_offsets: dict[str, tuple[int, int]] = {}
        self._load_index()

    def read(self, name: str) -> torch.Tensor:
        info, loc = self.infos[name], self._locations[name]
        start, size = self._record_offsets[loc.record]
        span = _span_bytes(info.shape, loc.stride, info.dtype.itemsize)
        if loc.offset + span > size:
            raise InputError(f"{self.path}: tensor {name!r} lies outside its storage record")
        with open(self.path, "rb", buffering=0) as f:
            raw = read_exact(f, start + loc.offset, span, self.path, name)
        flat = raw.view(info.dtype)
        if _is_contiguous(info.shape, loc.stride):
            return flat.reshape(info.shape)
        return flat.as_strided(info.shape, loc.stride).contiguous()

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the tensor's first dimension (a view of another layout than
        row-major is read whole and cut, which only old hand-made files need)."""
        info, loc = self.infos[name], self._locations[name]
        if not _is_contiguous(info.shape, loc.stride):
            return self.read(name)[start:stop].clone()
        row = info.nbytes // info.shape[0] if info.shape[0] else 0
        record, size = self._record_offsets[loc.record]
        if loc.offset + info.nbytes > size:
            raise InputError(f"{self.path}: tensor {name!r} lies outside its storage record")
        with open(self.path, "rb", buffering=0) as f:
            raw = read_exact(f, record + loc.offset + start * row, (stop - start) * row,
                             self.path, name)
        return raw.view(info.dtype).reshape(stop - start, *info.shape[1:])

    def _load_index(self) -> None:
        try:
            zf = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile:
            raise InputError(
                f"{self.path}: not a PyTorch zip checkpoint (legacy or damaged file)",
                "Old-style torch pickles cannot be read safely; re-save it with torch>=1.6 "
                "or download the file again.",
            ) from None
        with zf, open(self.path, "rb") as raw:
            pkl = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") <= 1]
            if len(pkl) != 1:
                raise InputError(f"{self.path}: no data.pkl in this torch zip file")
            prefix = pkl[0][: -len("data.pkl")]
            for zi in zf.infolist():
                if zi.filename.startswith(prefix + "data/"):
                    if zi.compress_type != zipfile.ZIP_STORED:
                        raise InputError(f"{self.path}: compressed storage records are unsupported")
                    self._record_offsets[zi.filename] = (_data_offset(raw, zi), zi.file_size)
            state = self._unpickle(zf.read(pkl[0]), prefix)
        self._collect(state)

    def _unpickle(self, data: bytes, prefix: str) -> object:
        keys: dict[int, str] = {}

        def persistent_load(pid: tuple) -> torch.storage.TypedStorage:
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
            _, storage_type, key, _location, numel = pid
            dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
            untyped = torch.UntypedStorage(numel * dtype.itemsize, device="meta")
            keys[untyped._cdata] = f"{prefix}data/{key}"
            return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)

        unpickler = _wo.Unpickler(io.BytesIO(data), encoding="utf-8")
        unpickler.persistent_load = persistent_load
        try:
            state = unpickler.load()
        except Exception as e:  # noqa: BLE001 - torch raises several types for refused pickles
            raise InputError(
                f"{self.path}: refused to load: the pickle inside is not plain tensors "
                f"({str(e).splitlines()[0]})",
                "weightkit never executes pickled code. Get a safetensors copy of this file, "
                "or one saved by torch.save(state_dict).",
            ) from None
        self._keys = keys
        return state

    def _collect(self, state: object) -> None:
        if not isinstance(state, dict):
            raise InputError(
                f"{self.path}: expected a dict of tensors, found {type(state).__name__}"
            )
        for name, t in state.items():
            if not isinstance(t, torch.Tensor):
                raise InputError(
                    f"{self.path}: entry {name!r} is a {type(t).__name__}, not a tensor",
                    "Only plain state dicts (name -> tensor) are supported.",
                )
            record = self._keys[t.untyped_storage()._cdata]
            offset = t.storage_offset() * t.dtype.itemsize
            self.infos[name] = TensorInfo(name, t.dtype, tuple(t.shape), self.path)
            self._locations[name] = _Location(record, offset, tuple(t.stride()))
        # file order, so that reads go forward through the file
        order = sorted(
            self.infos,
            key=lambda n: (self._record_offsets[self._locations[n].record][0]
                           + self._locations[n].offset, n),
        )
        self.infos = {n: self.infos[n] for n in order}


def _data_offset(raw, zi: zipfile.ZipInfo) -> int:
    raw.seek(zi.header_offset)
    header = raw.read(30)
    if header[:4] != b"PK\x03\x04":
        raise InputError(f"damaged zip entry {zi.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return zi.header_offset + 30 + name_len + extra_len


def _is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for dim, st in zip(reversed(shape), reversed(stride), strict=True):
        if dim != 1 and st != expected:
            return False
        expected *= dim
    return True


def _span_bytes(shape: tuple[int, ...], stride: tuple[int, ...], itemsize: int) -> int:
    if any(d == 0 for d in shape):
        return 0
    return (1 + sum((d - 1) * s for d, s in zip(shape, stride, strict=True))) * itemsize


# ---------------------------------------------------------------- writing


class _Storage:
    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel


class _Tensor:
    def __init__(self, storage: _Storage, shape: tuple[int, ...]) -> None:
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol: int):
        stride, acc = [], 1
        for d in reversed(self.shape):
            stride.append(acc)
            acc *= d
        args = (self.storage, 0, torch.Size(self.shape), tuple(reversed(stride)), False,
                collections.OrderedDict())
        if self.storage.dtype in _STORAGE_TYPES:
            return (torch._utils._rebuild_tensor_v2, args)
        # dtypes without a typed storage class (uint16, float8, ...): bytes and the dtype apart,
        # as torch.save writes them
        return (torch._utils._rebuild_tensor_v3, (*args, self.storage.dtype))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: object):
        if isinstance(obj, _Storage):
            if obj.dtype not in _STORAGE_TYPES:
                nbytes = obj.numel * obj.dtype.itemsize
                return ("storage", torch.UntypedStorage, obj.key, "cpu", nbytes)
            storage_type = getattr(torch, _STORAGE_TYPES[obj.dtype])
            return ("storage", storage_type, obj.key, "cpu", obj.numel)
        return None


class TorchZipWriter:
    """Writes one `.bin` file: `add` each planned tensor in order, then `close`."""

    def __init__(self, path: Path, plan: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> None:
        self._archive = path.stem
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._names = [name for name, _, _ in plan]
        self._next = 0
        state = {
            name: _Tensor(_Storage(str(i), dtype, _numel(shape)), tuple(shape))
            for i, (name, dtype, shape) in enumerate(plan)
        }
        buf = io.BytesIO()
        _Pickler(buf, protocol=2).dump(state)
        self._record("data.pkl", buf.getvalue())
        self._record("byteorder", b"little")

    def add(self, name: str, data: memoryview) -> None:
        with self.open_tensor(name, len(data)) as out:
            write_chunked(out, data)

    def open_tensor(self, name: str, nbytes: int):
        """The zip record of the next planned tensor, to write its `nbytes` into and close."""
        if self._names[self._next] != name:
            raise RuntimeError(f"tensor {name!r} written out of plan order")
        info = self._info(f"data/{self._next}", nbytes)
        self._next += 1
        return self._zip.open(info, "w", force_zip64=nbytes > 0x7FFF0000)

    def close(self) -> None:
        self._record("version", b"3\n")
        self._zip.close()

    def _record(self, name: str, data: bytes) -> None:
        with self._zip.open(self._info(name, len(data)), "w") as out:
            out.write(data)

    def _info(self, name: str, size: int) -> zipfile.ZipInfo:
        full = f"{self._archive}/{name}"
        info = zipfile.ZipInfo(full, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = size
        zip64 = size > 0x7FFF0000
        header = 30 + len(full.encode()) + (20 if zip64 else 0) + 4
        pad = -(self._zip.fp.tell() + header) % _ALIGN
        info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        return info


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
