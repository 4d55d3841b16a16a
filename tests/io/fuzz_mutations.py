"""Damaged checkpoint files for the readers' fuzz test (tests/io/test_reader_fuzz.py) and its long
run (benchmarks/fuzz_readers.py): one copy of the mutator, imported by both.

A case is one of two small sample files (a safetensors file and a torch `.bin` zip, with views,
shared storage, an empty and a 0-d tensor) damaged by one or two mutations drawn from a seeded
random.Random: header bytes flipped, header JSON fields given wrong types or values, the length
field changed, zip records dropped, renamed, resized or rewritten, the pickle altered, the file
truncated, extended or replaced by what failed downloads leave (an HTML page, a Git LFS pointer, a
JSON error body, ...). `outcome` opens the file with weightkit, reads every tensor whole and in
rows, and says what happened: "read" (and the bytes equal what the file says: as the safetensors
library or torch.load read it, or where they refuse the file over parts weightkit has no use for,
the undamaged sample's), "refused" (an InputError naming the file, with a hint), or what went
wrong.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import random
import struct
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

SAFETENSORS, TORCH = "safetensors", "bin"
FILE_NAMES = {SAFETENSORS: "model.safetensors", TORCH: "pytorch_model.bin"}
READ, REFUSED = "read", "refused"
REFERENCE_REFUSED = "the reference reader refuses it"


# ---------------------------------------------------------------- the sample files


def sample_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(6, 4, generator=g),
        "h": torch.randn(5, generator=g).half(),
        "b": torch.randn(3, 2, generator=g).bfloat16(),
        "i": torch.arange(4, dtype=torch.int64),
        "m": torch.tensor([[True, False], [False, True]]),
        "s": torch.tensor(1.5),
        "z": torch.zeros(0, 3),
    }


def _safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(state)


def torch_bytes(state: object, **kwargs) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf, **kwargs)
    return buf.getvalue()


_SAMPLES: dict[str, bytes] = {}


def sample(fmt: str) -> bytes:
    """The undamaged sample file's bytes (the .bin adds a transposed view and a row view of "w",
    so one storage record holds three tensors)."""
    if fmt not in _SAMPLES:
        state = sample_state()
        if fmt == TORCH:
            state |= {"t": state["w"].t(), "v": state["w"][2:4]}
        _SAMPLES[fmt] = (_safetensors_bytes if fmt == SAFETENSORS else torch_bytes)(state)
    return _SAMPLES[fmt]


# ---------------------------------------------------------------- mutations of any file

Mutation = Callable[[bytes, random.Random], bytes]

WRONG_VALUES: list[object] = [
    None,
    True,
    False,
    -1,
    0,
    1.5,
    "8",
    "",
    [],
    [0],
    [0, 1, 2],
    {},
    {"a": 1},
    2**64,
    -(2**63),
    [-8, 0],
    [8, 0],
    ["0", "8"],
    [0.0, 8.0],
    [True, False],
    [[0], [8]],
    [None, None],
    "F32",
]

# what a failed download leaves under a checkpoint's name, and other files that are not weights
NOT_WEIGHTS: list[bytes] = [
    b"",
    b"<!DOCTYPE html>\n<html><head><title>Access denied</title></head><body>Expired</body></html>",
    b"<html>\n<body>403 Forbidden</body>\n</html>\n",
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Request has expired</Message></Error>",
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4d5f2b0e7d1c3a9f8e6b5a4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e\n"
    b"size 13476925163\n",
    b'{"error": "Repository not found"}',
    b"  \n[1, 2, 3]",
    gzip.compress(b"not weights", mtime=0),
    pickle.dumps({"w": [1.0, 2.0]}, protocol=2),
    b"\x00" * 64,
    b"Entry not found",
]


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if out:
            out[rng.randrange(len(out))] ^= (
                1 << rng.randrange(8) if rng.random() < 0.5 else rng.randrange(1, 256)
            )
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.3:  # near the end, where the zip directory and the last tensor are
        return data[: max(0, len(data) - rng.randint(1, 64))]
    return data[: rng.randrange(len(data) + 1)]


def extend(data: bytes, rng: random.Random) -> bytes:
    tail = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    return data + (b"\x00" * len(tail) if rng.random() < 0.5 else tail)


def replace_whole(data: bytes, rng: random.Random) -> bytes:
    choices = [
        *NOT_WEIGHTS,
        sample(SAFETENSORS),
        sample(TORCH),
        torch_bytes(sample_state(), _use_new_zipfile_serialization=False),
    ]
    return rng.choice(choices)


# ---------------------------------------------------------------- safetensors


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    """(the header's JSON, the data) of a safetensors file."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_safetensors(header: object, body: bytes, pad: int | None = None) -> bytes:
    """A safetensors file of this header and data; the header padded with `pad` spaces (by
    default to a multiple of 8, as writers do)."""
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8 if pad is None else pad)
    return struct.pack("<Q", len(text)) + text + body


def _wrong_shape(shape: object, rng: random.Random) -> object:
    shape = shape if isinstance(shape, list) and all(isinstance(d, int) for d in shape) else [2]
    options: list[object] = [
        *WRONG_VALUES,
        shape[::-1],
        [*shape, 1],
        [1, *shape],
        [2**62, 2**62],
        [-d for d in shape],
        shape[:-1],
    ]
    if shape:
        bumped = list(shape)
        bumped[rng.randrange(len(shape))] += rng.choice([-1, 1, 2])
        options.append(bumped)
    return rng.choice(options)


def _wrong_offsets(offsets: object, others: list[object], rng: random.Random) -> object:
    good = isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
    begin, end = offsets if good else (0, 8)
    d = rng.choice([1, 2, 4, 8, -1, -2, -4, -8])
    return rng.choice(
        [
            *WRONG_VALUES,
            [end, begin],
            [begin + d, end + d],
            [begin, end + d],
            [begin + d, end],
            rng.choice(others),
            [begin, end, end],
            [begin],
        ]
    )


def header_field(data: bytes, rng: random.Random) -> bytes:
    """A header JSON field given a wrong type or value (or removed, or a stray one added)."""
    header, body = split_safetensors(data)
    names = [k for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    r = rng.random()
    if not names:
        header["__metadata__"] = rng.choice(WRONG_VALUES)
    elif r < 0.1:
        header["__metadata__"] = rng.choice([*WRONG_VALUES, {"format": 1}, {"k": None}])
    elif r < 0.2:
        header[rng.choice(names)] = rng.choice(WRONG_VALUES)
    elif r < 0.25:
        del header[rng.choice(names)]
    elif r < 0.3:
        header["new"] = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    else:
        entry = header[rng.choice(names)]
        field = rng.choice(["dtype", "shape", "data_offsets", "data_offsets", "extra"])
        if rng.random() < 0.15 and field in entry:
            del entry[field]
        elif field == "dtype":
            entry[field] = rng.choice(
                [
                    *WRONG_VALUES,
                    "F99",
                    "f32",
                    "I32",
                    "F64",
                    "U8",
                    "BOOL",
                    "I8",
                    "F16",
                    "BF16",
                    "U16",
                    "U32",
                    "U64",
                    "F8_E4M3",
                    "F8_E5M2",
                    "C64",
                    "F4",
                    "F8_E8M0",
                ]
            )
        elif field == "shape":
            entry[field] = _wrong_shape(entry.get("shape"), rng)
        elif field == "data_offsets":
            others = [header[n].get("data_offsets") for n in names]
            entry[field] = _wrong_offsets(entry["data_offsets"], others, rng)
        else:
            entry["extra"] = rng.choice(WRONG_VALUES)
    return join_safetensors(header, body, None if rng.random() < 0.8 else rng.randrange(8))


def flip_header_byte(data: bytes, rng: random.Random) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        i = 8 + rng.randrange(n)
        out[i] = (
            rng.choice(b'{}[]",:0123456789-.eE \\"x\x00\xff')
            if rng.random() < 0.6
            else out[i] ^ (1 << rng.randrange(8))
        )
    return bytes(out)


def length_field(data: bytes, rng: random.Random) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    new = rng.choice(
        [
            n + 1,
            n - 1,
            n + 8,
            n - 8,
            0,
            1,
            7,
            len(data),
            len(data) - 8,
            2**64 - 1,
            2**63,
            100_000_001,
            104_857_601,
            rng.randrange(2**64),
            rng.randrange(len(data)),
        ]
    )
    return struct.pack("<Q", max(0, new)) + data[8:]


# ---------------------------------------------------------------- torch zip


def zip_entries(data: bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) of every record of a zip, in order."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(zi.filename, zf.read(zi)) for zi in zf.infolist()]


def rezip(entries: list[tuple[str, bytes]]) -> bytes:
    """A zip of these records, uncompressed as torch stores them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, payload in entries:
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), payload)
    return buf.getvalue()


def drop_record(data: bytes, rng: random.Random) -> bytes:
    entries = zip_entries(data)
    del entries[rng.randrange(len(entries))]
    return rezip(entries)


def resize_record(data: bytes, rng: random.Random) -> bytes:
    """A record shortened, lengthened or given other content (byteorder "big", say)."""
    entries = zip_entries(data)
    i = rng.randrange(len(entries))
    name, payload = entries[i]
    r = rng.random()
    if r < 0.45:
        payload = payload[: rng.randrange(len(payload) + 1)]
    elif r < 0.7:
        payload += bytes(rng.randint(1, 16))
    elif name.endswith("byteorder"):
        payload = rng.choice([b"big", b"", b"little\n", b"LITTLE"])
    else:
        payload = rng.choice([b"", b"\x00", b"3\n", b"big", payload[::-1]])
    entries[i] = (name, payload)
    return rezip(entries)


def rename_record(data: bytes, rng: random.Random) -> bytes:
    """One character of a record's name changed where the local header, the central directory
    or both spell it (a byte over 0x7f makes the UTF-8 name undecodable)."""
    names = [name.encode() for name, _ in zip_entries(data)]
    name = rng.choice(names)
    spots = [i for i in range(len(data)) if data.startswith(name, i)]
    chosen = spots if rng.random() < 0.4 else [rng.choice(spots)]
    k = rng.randrange(len(name))
    new = rng.choice(b"0123456789abcxyz/._\xff\xc3\x80")
    out = bytearray(data)
    for i in chosen:
        out[i + k] = new
    return bytes(out)


def flip_zip_structure(data: bytes, rng: random.Random) -> bytes:
    """A byte flipped in a local header, the central directory or the end record."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        spans = [(zi.header_offset, zi.header_offset + 30 + len(zi.filename)) for zi in infos]
        spans.append((zf.start_dir, len(data)))
    start, stop = rng.choice(spans)
    out = bytearray(data)
    i = rng.randrange(start, stop)
    out[i] = out[i] ^ (1 << rng.randrange(8)) if rng.random() < 0.5 else rng.randrange(256)
    return bytes(out)


def alter_pickle(data: bytes, rng: random.Random) -> bytes:
    """data.pkl with bytes flipped, inserted or removed, and a correct CRC, so that the
    unpickler, not the zip layer, meets the damage."""
    entries = zip_entries(data)
    i = next(k for k, (name, _) in enumerate(entries) if name.endswith("data.pkl"))
    pkl = bytearray(entries[i][1])
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(pkl))
        r = rng.random()
        if r < 0.6:
            pkl[at] = rng.randrange(256)
        elif r < 0.8:
            pkl.insert(at, rng.randrange(256))
        else:
            del pkl[at]
    entries[i] = (entries[i][0], bytes(pkl))
    return rezip(entries)


def odd_state(data: bytes, rng: random.Random) -> bytes:
    """A well-formed torch zip of something other than a plain state dict of tensors."""
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    states: list[object] = [
        [t],
        t,
        {1: t},
        {("a", 1): t},
        {"a": 1.5},
        {"a": {"b": t}},
        {"a": [t]},
        {},
        None,
        {"a": torch.nn.Parameter(t)},
        {"a": t.to(torch.complex64)},
        {"a": t.to_sparse()},
        {"a": t.to(torch.uint16)},
        {"a": t.to(torch.float8_e4m3fn)},
        {"a": t[:, ::2]},
        {"a": t.unsqueeze(0).expand(4, 2, 3)},
        {"a": t[1:], "b": t},
        {"a": torch.empty(0)},
        {"a": t.as_strided((2, 2), (0, 1))},
    ]
    return torch_bytes(rng.choice(states))


MUTATIONS: dict[str, list[tuple[Mutation, int]]] = {
    SAFETENSORS: [
        (flip_header_byte, 3),
        (header_field, 6),
        (length_field, 2),
        (truncate, 2),
        (flip_bytes, 2),
        (extend, 1),
        (replace_whole, 1),
    ],
    TORCH: [
        (drop_record, 3),
        (rename_record, 3),
        (resize_record, 3),
        (flip_zip_structure, 3),
        (alter_pickle, 3),
        (odd_state, 1),
        (truncate, 2),
        (flip_bytes, 2),
        (extend, 1),
        (replace_whole, 1),
    ],
}


def make_case(seed: int, index: int) -> tuple[str, list[str], bytes]:
    """Case `index` of run `seed`: (format, mutations applied, the file's bytes)."""
    rng = random.Random(seed * 1_000_003 + index)
    fmt = SAFETENSORS if rng.random() < 0.5 else TORCH
    data, applied = sample(fmt), []
    mutations, weights = zip(*MUTATIONS[fmt], strict=True)
    for i in range(1 if rng.random() < 0.8 else 2):
        mutation = rng.choices(mutations, weights)[0]
        try:
            data = mutation(data, rng)
        except Exception:  # noqa: BLE001 - the file's structure, broken by the first mutation
            if i == 0:
                raise
            continue
        applied.append(mutation.__name__)
    return fmt, applied, data


# ---------------------------------------------------------------- what the readers make of it


def _bytes_of(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def undamaged(fmt: str) -> dict[str, tuple[torch.dtype, tuple[int, ...], bytes]]:
    """The sample file's tensors as it was made."""
    state = (
        torch.load(io.BytesIO(sample(fmt)), weights_only=True) if fmt == TORCH else sample_state()
    )
    return {name: (t.dtype, tuple(t.shape), _bytes_of(t)) for name, t in state.items()}


def read_with_weightkit(path: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...], bytes]]:
    """Every tensor, read whole and in two pieces of rows; raises AssertionError if the pieces
    disagree with the whole."""
    from weightkit.io.reader import open_checkpoint

    ckpt = open_checkpoint(path)
    got = {}
    for name in ckpt.names():
        info = ckpt.info(name)
        t = ckpt.read(name)
        assert (t.dtype, tuple(t.shape)) == (info.dtype, info.shape), name
        whole = _bytes_of(t)
        if info.shape:
            rows = info.shape[0]
            cut = rows // 2
            pieces = [ckpt.read_rows(name, a, b) for a, b in ((0, cut), (cut, rows))]
            assert b"".join(_bytes_of(p) for p in pieces) == whole, name
            assert ckpt.read_rows(name, rows, rows).shape == (0, *info.shape[1:]), name
        got[name] = (info.dtype, info.shape, whole)
    return got


def read_with_reference(path: Path, fmt: str) -> dict | None:
    """The tensors as the safetensors library or torch.load read the file; None if they refuse."""
    try:
        if fmt == SAFETENSORS:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                state = {name: f.get_tensor(name) for name in f.keys()}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any refusal of the reference reader counts as one
        return None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        return None
    return {name: (t.dtype, tuple(t.shape), _bytes_of(t)) for name, t in state.items()}


def outcome(path: Path, fmt: str) -> tuple[str, str]:
    """(outcome, detail) for the file at `path`: ("read", "" or REFERENCE_REFUSED), ("refused",
    the message), or a failure: "unhandled" (detail: the exception and where it was raised),
    "no-file-named", "no-hint", "mismatch"."""
    from weightkit.errors import InputError

    try:
        got = read_with_weightkit(path)
    except InputError as e:
        if str(path) not in e.message:
            return "no-file-named", e.message
        if not e.hint:
            return "no-hint", e.message
        return REFUSED, str(e)
    except AssertionError as e:
        return "mismatch", f"rows differ from the whole tensor {e}"
    except Exception as e:  # noqa: BLE001 - what the fuzz exists to find
        where = traceback.extract_tb(e.__traceback__)[-1]
        return "unhandled", f"{type(e).__name__} at {Path(where.filename).name}:{where.lineno}"
    expected, detail = read_with_reference(path, fmt), ""
    if expected is None:
        # the reference is stricter about records weightkit has no use for (torch reads every
        # record's local header, miniz checks the zip's end record): then the file must have
        # kept the sample's tensors intact, and they are what weightkit read
        expected, detail = undamaged(fmt), REFERENCE_REFUSED
    if got != expected:
        differ = [repr(n) for n in {*got, *expected} if got.get(n) != expected.get(n)]
        return "mismatch", f"tensors differ ({detail or 'from the reference'}): {differ}"
    return READ, detail
