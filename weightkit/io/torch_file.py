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
import os
import pickle
import struct
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, SupportsIndex

import torch
import torch._weights_only_unpickler as _wo

from weightkit.errors import InputError
from weightkit.io.raw_bytes import read_exact, write_chunked
from weightkit.io.sniff import DOWNLOAD_AGAIN, TORCH_ZIP, TRUNCATED_HINT, not_weights
from weightkit.io.tensor_info import TensorInfo, numel

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


# what zipfile raises on a damaged archive: BadZipFile for what it checks, and for the rest a
# failed seek (a garbled offset), a short read (a garbled size), a failed decode (a garbled
# name) or NotImplementedError (a flag or version it does not know)
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    ValueError,
    struct.error,
    NotImplementedError,
)
# zip flags: encrypted, patched data, strong encryption, encrypted directory; UTF-8 name
_ENCRYPTED_OR_PATCHED = 0x1 | 0x20 | 0x40 | 0x2000
_UTF8_NAME = 0x800
_DOS_FOLDER = 0x10  # in the external attributes


class TorchFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.infos: dict[str, TensorInfo] = {}
        self._locations: dict[str, _Location] = {}
        self._record_offsets: dict[str, tuple[int, int]] = {}  # record -> (file offset, size)
        self._keys: dict[int, tuple[str, int]] = {}  # storage -> (its record, its size)
        self._load_index()

    def read(self, name: str) -> torch.Tensor:
        info, loc = self.infos[name], self._locations[name]
        start, _ = self._record_offsets[loc.record]
        span = _span_bytes(info.shape, loc.stride, info.dtype.itemsize)
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
        record, _ = self._record_offsets[loc.record]
        with open(self.path, "rb", buffering=0) as f:
            raw = read_exact(
                f, record + loc.offset + start * row, (stop - start) * row, self.path, name
            )
        return raw.view(info.dtype).reshape(stop - start, *info.shape[1:])

    def _load_index(self) -> None:
        with open(self.path, "rb") as raw:  # outside the try: an unreadable file is not damaged
            try:
                zf = zipfile.ZipFile(raw)
            except _ZIP_ERRORS:
                raw.seek(0)
                if raw.read(4) != b"PK\x03\x04":
                    raise not_weights(
                        self.path, TORCH_ZIP, "not a PyTorch zip checkpoint"
                    ) from None
                raise self._damaged(
                    "the zip directory at its end is missing or garbled (a truncated download?)"
                ) from None
            try:
                with zf:
                    prefix, pickled = self._read_zip(zf, raw)
            except _ZIP_ERRORS as e:
                what = (
                    "a record's name is garbled"
                    if isinstance(e, UnicodeDecodeError)
                    else _first_line(e)
                )
                raise self._damaged(what) from None
        self._collect(self._unpickle(pickled, prefix))

    def _read_zip(self, zf: zipfile.ZipFile, raw: IO[bytes]) -> tuple[str, bytes]:
        """(the archive's folder, its pickle); the storage records' places go to
        self._record_offsets. The zip is checked as torch's reader checks it, so that what it
        would refuse is refused here too; the small records (all but data/*) are read whole,
        which makes zipfile check their local headers and CRCs."""
        infos = zf.infolist()
        prefix = infos[0].filename.partition("/")[0] + "/" if infos else ""  # torch's rule
        if prefix + "data.pkl" not in zf.NameToInfo:
            raise InputError(
                f"{self.path}: no data.pkl in this zip, so it is not a PyTorch checkpoint",
                DOWNLOAD_AGAIN,
            )
        if len(zf.NameToInfo) != len(infos):
            raise self._damaged("a record appears twice in its directory")
        size = os.fstat(raw.fileno()).st_size
        _check_end_records(raw, size, len(infos), self._damaged)
        small: dict[str, bytes] = {}
        for zi in infos:
            start = self._check_record(zi, prefix, raw, size)
            name = zi.filename[len(prefix) :]
            if name.startswith("data/"):
                self._record_offsets[zi.filename] = (start, zi.file_size)
            else:
                small[name] = zf.read(zi)
        self._check_small_records(small)
        return prefix, small["data.pkl"]

    def _check_record(self, zi: zipfile.ZipInfo, prefix: str, raw: IO[bytes], size: int) -> int:
        """Where the record's bytes start, after its local header. torch never compresses,
        encrypts or spans disks, and its names are UTF-8."""
        if not zi.filename.startswith(prefix):
            raise self._damaged(f"record {zi.filename} lies outside the folder {prefix}")
        if (
            zi.compress_type != zipfile.ZIP_STORED
            or zi.flag_bits & _ENCRYPTED_OR_PATCHED
            or zi.compress_size != zi.file_size
        ):
            raise self._damaged(f"record {zi.filename} is marked compressed or encrypted")
        if (
            zi.volume
            or zi.is_dir()
            or zi.external_attr & _DOS_FOLDER
            or not (zi.flag_bits & _UTF8_NAME or zi.filename.isascii())
        ):
            raise self._damaged(f"the directory entry of record {zi.filename} is garbled")
        header = b""
        if 0 <= zi.header_offset <= size - 30:
            raw.seek(zi.header_offset)
            header = raw.read(30)
        if header[:4] != b"PK\x03\x04":
            raise self._damaged(f"the local header of record {zi.filename} is damaged")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = zi.header_offset + 30 + name_len + extra_len
        if start + zi.file_size > size:
            raise InputError(
                f"{self.path}: file is truncated: record {zi.filename} ends at "
                f"byte {start + zi.file_size}, but the file holds {size}",
                TRUNCATED_HINT,
            )
        return start

    def _check_small_records(self, small: dict[str, bytes]) -> None:
        """torch needs a version record and parses it and .storage_alignment as numbers; it
        byte-swaps the tensors of a big-endian file, which weightkit does not."""
        if ".data/version" not in small and "version" not in small:
            raise self._damaged("it has no version record")
        for name in (".data/version", "version", ".storage_alignment"):
            if name in small and not small[name].strip().isdigit():
                raise self._damaged(f"its {name} record is {small[name][:20]!r}, not a number")
        byteorder = small.get("byteorder", b"little")
        if byteorder == b"big":
            raise InputError(
                f"{self.path}: a big-endian checkpoint, which weightkit does not read",
                "Load and re-save it with torch on a little-endian machine, "
                "or get a safetensors copy.",
            )
        if byteorder != b"little":
            raise self._damaged(f"its byteorder record is {byteorder[:20]!r}, not little or big")

    def _damaged(self, what: str) -> InputError:
        return InputError(f"{self.path}: damaged PyTorch zip checkpoint: {what}", DOWNLOAD_AGAIN)

    def _unpickle(self, data: bytes, prefix: str) -> object:
        unpickler = _MetaUnpickler(data, prefix)
        try:
            with warnings.catch_warnings():  # torch warns of protocols it has not tested
                warnings.simplefilter("ignore")
                state = unpickler.load()
        except Exception as e:  # noqa: BLE001 - torch raises several types for refused pickles
            raise InputError(
                f"{self.path}: refused to load: the pickle inside is not plain tensors, or it "
                f"is damaged ({type(e).__name__}: {_first_line(e)})",
                "weightkit never executes pickled code. Download the file again; if that does "
                "not help, get a safetensors copy of it, or one saved by torch.save(state_dict).",
            ) from None
        self._keys = unpickler.keys
        return state

    def _collect(self, state: object) -> None:
        if not isinstance(state, dict):
            raise InputError(
                f"{self.path}: expected a dict of tensors, found {type(state).__name__}",
                "Only plain state dicts (name -> tensor) are supported.",
            )
        for name, t in state.items():
            self._add(name, t)
        # file order, so that reads go forward through the file
        order = sorted(
            self.infos,
            key=lambda n: (
                self._record_offsets[self._locations[n].record][0] + self._locations[n].offset,
                n,
            ),
        )
        self.infos = {n: self.infos[n] for n in order}

    def _add(self, name: object, t: object) -> None:
        """Index one entry of the state dict, checking it against the zip's records."""
        if not isinstance(t, torch.Tensor) or not isinstance(name, str):
            what = (
                f"is a {type(t).__name__}, not a tensor"
                if isinstance(name, str)
                else f"has a name of type {type(name).__name__}, not a string"
            )
            raise InputError(
                f"{self.path}: entry {name!r} {what}",
                "Only plain state dicts (name -> tensor) are supported.",
            )
        if t.layout != torch.strided:
            raise InputError(
                f"{self.path}: tensor {name!r} is a {t.layout} tensor, which "
                "weightkit does not read",
                "Save it as a dense tensor.",
            )
        record, nbytes = self._keys.get(t.untyped_storage()._cdata, (None, 0))
        if record is None:
            raise InputError(f"{self.path}: tensor {name!r} has no storage record", DOWNLOAD_AGAIN)
        if record not in self._record_offsets:
            raise InputError(
                f"{self.path}: tensor {name!r}: its storage record {record} is "
                "missing from the zip",
                DOWNLOAD_AGAIN,
            )
        size = self._record_offsets[record][1]
        if size != nbytes:
            raise InputError(
                f"{self.path}: tensor {name!r}: its storage record {record} holds "
                f"{size} bytes, but the pickle says {nbytes}",
                DOWNLOAD_AGAIN,
            )
        offset = int(t.storage_offset()) * t.dtype.itemsize
        stride = tuple(t.stride())
        if (
            any(s < 0 for s in stride)
            or offset + _span_bytes(tuple(t.shape), stride, t.dtype.itemsize) > size
        ):
            raise InputError(
                f"{self.path}: tensor {name!r} lies outside its storage record", DOWNLOAD_AGAIN
            )
        self.infos[name] = TensorInfo(name, t.dtype, tuple(t.shape), self.path)
        self._locations[name] = _Location(record, offset, stride)


class _MetaUnpickler(_wo.Unpickler):
    """torch's weights_only unpickler, its storages stubbed on the meta device: `keys` maps each
    storage to (its record, its size in bytes)."""

    def __init__(self, data: bytes, prefix: str) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self.prefix = prefix
        self.keys: dict[int, tuple[str, int]] = {}

    def persistent_load(self, pid: object) -> torch.storage.TypedStorage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not (isinstance(key, str) and type(numel) is int and numel >= 0):
            raise pickle.UnpicklingError(f"storage key {key!r} of {numel!r} elements")
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
        untyped = torch.UntypedStorage(numel * dtype.itemsize, device="meta")
        self.keys[untyped._cdata] = (f"{self.prefix}data/{key}", numel * dtype.itemsize)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def _check_end_records(
    raw: IO[bytes], size: int, count: int, damaged: Callable[[str], InputError]
) -> None:
    """torch's zip reader (miniz) refuses an archive whose end records (torch writes the zip64
    ones too) name another disk or count other entries than the directory holds; zipfile does
    not look."""
    raw.seek(max(0, size - 42))
    tail = raw.read(42)  # the zip64 locator (20 bytes), then the end record (22)
    if len(tail) < 42 or tail[20:24] != b"PK\x05\x06":
        return  # a zip comment follows the end record: zipfile found it further back
    records = [struct.unpack("<HHHH", tail[24:32])]  # disk, directory's disk, entries here, all
    if tail[:4] == b"PK\x06\x07":
        locator_disk, at, disks = struct.unpack("<IQI", tail[4:20])
        zip64 = b""
        if at <= size - 40:
            raw.seek(at)
            zip64 = raw.read(40)
        if locator_disk or disks != 1 or zip64[:4] != b"PK\x06\x06":
            raise damaged("its zip64 end record is damaged")
        records.append(struct.unpack("<IIQQ", zip64[16:40]))
    for disk, directory_disk, here, total in records:
        if disk or directory_disk or here != total or total not in (count, 0xFFFF):
            raise damaged("its end record is damaged")


def _first_line(e: BaseException) -> str:
    """An exception's message, first line only (some have none)."""
    lines = str(e).splitlines()
    return lines[0] if lines else "no message"


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

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[object, tuple[object, ...]]:
        stride: list[int] = []
        acc = 1
        for d in reversed(self.shape):
            stride.append(acc)
            acc *= d
        args: tuple[object, ...] = (
            self.storage,
            0,
            torch.Size(self.shape),
            tuple(reversed(stride)),
            False,
            collections.OrderedDict(),
        )
        if self.storage.dtype in _STORAGE_TYPES:
            return (torch._utils._rebuild_tensor_v2, args)
        # dtypes without a typed storage class (uint16, float8, ...): bytes and the dtype apart,
        # as torch.save writes them
        return (torch._utils._rebuild_tensor_v3, (*args, self.storage.dtype))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> tuple[object, ...] | None:
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
            name: _Tensor(_Storage(str(i), dtype, numel(shape)), tuple(shape))
            for i, (name, dtype, shape) in enumerate(plan)
        }
        buf = io.BytesIO()
        _Pickler(buf, protocol=2).dump(state)
        self._record("data.pkl", buf.getvalue())
        self._record("byteorder", b"little")

    def add(self, name: str, data: memoryview) -> None:
        with self.open_tensor(name, len(data)) as out:
            write_chunked(out, data)

    def open_tensor(self, name: str, nbytes: int) -> IO[bytes]:
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
        if self._zip.fp is None:
            raise ValueError(f"{self._archive}: the zip is closed")
        pad = -(self._zip.fp.tell() + header) % _ALIGN
        info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        return info
