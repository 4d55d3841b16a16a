"""Lossless diffs: each tuned tensor as the difference of its bit patterns from raw's, compressed.

A fine-tune moves most weights by a few units in the last place, so the integer difference of the
bit patterns is mostly tiny numbers, and adding it back (modulo 2**bits) is exact by construction,
whatever the values (sign changes, NaN, inf). Per tensor, with B = its itemsize:

    d      = tuned bits - raw bits, as unsigned B-byte integers, wrapping; rows the tuned
             tensor has beyond raw's (vocabulary extension) keep their own bits: d = tuned bits
    z      = zigzag(d) = (d << 1) ^ (d >> 8B-1, arithmetic)   -1, +1, -2 … -> 1, 2, 3 …
    planes = byte planes of z: every element's lowest byte, then every next byte, …
    payload = one zstd frame of planes (content size and checksum included)

Measured on LLaMA-shaped fp16/bf16 tensors moved by 1e-3 and 1e-2 of their magnitude (table in
docs/lossless-diff.md): subtraction beats XOR (a change that crosses a power of two flips many bits
of the XOR but is still +-1 apart as integers); byte planes only pay once the sign is zigzagged
out of the high byte, and then they save 20-25 %; zstd level 1 compresses these noise-like planes
*better* than level 3 (which spends bits on chance matches), and faster, so it is the default.
zstd (python-zstandard, binding the reference C library) is the one extra dependency: fast,
multi-threaded, checksummed frames with their size in the header, wheels for every platform.

The second half of this module is the `diff --lossless` of two models and the model recovered
from such a diff (`LosslessRecoveredView`, a source that `recover` writes); the container
(safetensors of zstd frames) is weightkit.io.lossless_diff.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import zstandard

from weightkit.checkpoint import write_checkpoint
from weightkit.dtypes import SAME_WIDTH, SIGNED, UNSIGNED, bit_patterns, output_dtype, short_name
from weightkit.engine import identity
from weightkit.errors import ChecksumError, InputError
from weightkit.io.buffers import empty_bytes, release
from weightkit.io.lossless_diff import LOSSLESS_FORMAT, LosslessDiffReader, LosslessDiffWriter
from weightkit.io.reader import folder_config
from weightkit.io.tensor_info import TensorInfo, numel
from weightkit.io.writer import CheckpointFiles, FilesWriter, FinishedFile
from weightkit.manifest import TARGET_MANIFEST_NAME, Manifest, ManifestEntry
from weightkit.ops.pairing import Pair, Pairing, pair_checkpoints
from weightkit.options import HubOptions, WriteOptions
from weightkit.results import WriteResult
from weightkit.sources.open import Reading, local_paths
from weightkit.sources.source import Node, SideFiles, Source, View, folder_files
from weightkit.sources.write import check_output

DEFAULT_LEVEL = 1


def encode(raw: torch.Tensor, tuned: torch.Tensor, level: int = DEFAULT_LEVEL) -> bytes:
    """The payload that gives `tuned` back from `raw`; both must have the same dtype."""
    if raw.dtype != tuned.dtype:
        raise ValueError(f"raw is {raw.dtype}, tuned is {tuned.dtype}")
    d = bit_patterns(tuned).copy()
    shared = d[: raw.numel()]  # the flat prefix: extra vocabulary rows come last
    np.subtract(shared, bit_patterns(raw), out=shared)
    # threads >= 1 always (never 0): zstd's multi-threaded output is the same for any number
    # of workers, so the diff's bytes do not depend on the machine that made it
    zstd = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
    return zstd.compress(_to_planes(_zigzag(d)).data)


def decode(raw: torch.Tensor, payload: bytes | memoryview, shape: tuple[int, ...]) -> torch.Tensor:
    """The tuned tensor (of `shape`, in raw's dtype) that `encode` made `payload` from."""
    return add_back(raw, unpack(payload, raw.dtype, numel(shape)), shape)


def unpack(
    payload: bytes | memoryview, dtype: torch.dtype, numel: int, scratch: torch.Tensor | None = None
) -> torch.Tensor:
    """Decompress a payload into its zigzagged differences (the costly half of decode).

    `scratch`, numel * itemsize bytes, holds the byte planes meanwhile (give one to reuse it).
    Raises zstandard.ZstdError when the frame is damaged (its checksum is checked).
    """
    width = dtype.itemsize
    want = numel * width
    size = zstandard.frame_content_size(payload)
    if size != want:  # checked first: a damaged header must not make us allocate its claim
        raise zstandard.ZstdError(f"frame holds {size} bytes, the tensor needs {want}")
    planes = (empty_bytes(want) if scratch is None else scratch).numpy()
    _decompress_into(payload, planes)
    out = empty_bytes(want).view(SAME_WIDTH[width])  # pooled buffer inside a pipeline run
    z = out.numpy().view(UNSIGNED[width])
    planes = planes.reshape(width, numel)
    # shift-or, plane by plane: 8x faster than a transposed copy
    np.copyto(z, planes[width - 1])
    for i in range(width - 2, -1, -1):
        np.left_shift(z, 8, out=z)
        np.bitwise_or(z, planes[i], out=z)
    return out


def _decompress_into(payload: bytes | memoryview, out: np.ndarray) -> None:
    """One whole frame into `out`, its exact size: into a reused buffer, decompressing runs 2x
    faster than into a fresh one (no page faults)."""
    view = out.data.cast("B")
    with zstandard.ZstdDecompressor().stream_reader(payload) as reader:
        got = 0
        while got < len(view):
            n = reader.readinto(view[got:])
            if not n:
                raise zstandard.ZstdError(f"frame ends after {got} of {len(view)} bytes")
            got += n
        if reader.read(1):  # also makes sure the checksum at the frame's end was checked
            raise zstandard.ZstdError("frame holds more bytes than it says")


def add_back(raw: torch.Tensor, packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """tuned = raw + unzigzag(packed), built in packed's buffer (the cheap half of decode)."""
    z = packed.numpy().view(UNSIGNED[raw.dtype.itemsize])
    sign = np.bitwise_and(z, 1)
    np.negative(sign, out=sign)  # 0 or all ones (unsigned negation wraps)
    np.right_shift(z, 1, out=z)
    np.bitwise_xor(z, sign, out=z)
    shared = z[: raw.numel()]
    np.add(shared, bit_patterns(raw), out=shared)
    return packed.view(raw.dtype).reshape(shape)


def _zigzag(d: np.ndarray) -> np.ndarray:
    """Small signed differences to small unsigned numbers, in place."""
    sign = d.view(SIGNED[d.itemsize]) >> (8 * d.itemsize - 1)  # arithmetic: 0 or -1
    np.left_shift(d, 1, out=d)
    np.bitwise_xor(d, sign.view(d.dtype), out=d)
    return d


def _to_planes(z: np.ndarray) -> np.ndarray:
    return z.view(np.uint8).reshape(-1, z.itemsize).T.copy()


# --- the commands: `diff --lossless` and `recover` of a lossless diff ---------------------------


def diff_lossless(
    raw: str | Path,
    tuned: str | Path,
    out: str | Path,
    *,
    level: int = DEFAULT_LEVEL,
    options: WriteOptions | None = None,
    hub: HubOptions | None = None,
) -> WriteResult:
    """Write a lossless diff of `tuned` against `raw` (same dtype per tensor) into `out`.

    Besides the compressed tensors, `out` gets the tuned model's tensor manifest
    (weightkit.target-manifest.json) and its config and tokenizer files. `level` is zstd's.
    It runs on write_checkpoint's outline: the jobs load the tuned tensors (so the run's
    manifest is the target manifest) and the writer encodes each against raw's; a killed run
    resumes after its last finished file. `options.format` and `options.device` do not apply.
    """
    options = options if options is not None else WriteOptions()
    check_output(out, local_paths(raw, tuned), options)
    reading = Reading.of(options, hub)
    raw_src = reading.open(raw, role="raw")
    tuned_src = reading.open(tuned, role="tuned")
    pairing = pair_checkpoints(raw_src, tuned_src, "tuned model")
    notes = [*raw_src.notes, *tuned_src.notes, *pairing.notes()]
    _check_dtypes(
        pairing,
        "the tuned model",
        "A lossless diff stores bit patterns, so both models need the same dtype per "
        "tensor. Use `dtype` fp32 instead of `lossless` (a plain fp32 diff).",
    )
    jobs = [_diff_node(tuned_src, p.name) for p in pairing.pairs]
    files = _LosslessFiles(raw_src, {p.name: p.raw.shape for p in pairing.pairs}, level)
    return write_checkpoint(
        out,
        jobs,
        title="diff --lossless",
        inputs=[*raw_src.inputs, *tuned_src.inputs],
        options=options.replace(device="cpu"),
        log=reading.log,
        side_files=() if options.dry_run else tuned_src.side_files(),
        notes=notes,
        files=files,
    )


def _diff_node(tuned: Source, name: str) -> Node:
    """The tuned tensor as its source gives it (a raw Meta folder's converted), whole: the
    writer encodes whole tensors."""
    return dataclasses.replace(tuned.node(name), load_rows=None)


class _LosslessFiles(CheckpointFiles):
    """What `diff --lossless` writes, for write_checkpoint: lossless diff files, in which each
    tuned tensor the jobs give is encoded against raw's as it is written."""

    manifest_name = TARGET_MANIFEST_NAME  # the jobs' tensors are the tuned model's

    def __init__(self, raw: Source, raw_shapes: dict[str, tuple[int, ...]], level: int) -> None:
        self.raw, self.raw_shapes, self.level = raw, raw_shapes, level
        self.format = LOSSLESS_FORMAT
        self.key = f"lossless-diff level {level}"  # another level gives other bytes

    def writer(
        self,
        folder: Path,
        plan: list[TensorInfo],
        max_shard_size: int,
        on_shard_done: Callable[[int], None],
    ) -> FilesWriter:
        container = LosslessDiffWriter(folder, plan, self.raw_shapes, max_shard_size, on_shard_done)
        return _EncodingWriter(container, self.raw, self.level)

    def open(self, path: Path) -> FinishedFile:
        return _DecodedFile(LosslessDiffReader(path), self.raw)


class _EncodingWriter:
    """The pipeline's writer: each tuned tensor, encoded against raw's, into the container."""

    def __init__(self, container: LosslessDiffWriter, raw: Source, level: int) -> None:
        self.container, self.raw, self.level = container, raw, level
        self.total_size = container.total_size  # of the tuned tensors: what progress counts
        self.shards, self.file_names = container.shards, container.file_names
        self.resume = container.resume

    @property
    def bytes_written(self) -> int:
        return self.container.bytes_written

    def write(self, name: str, tuned: torch.Tensor, rows: tuple[int, int] | None = None) -> None:
        if rows is not None:  # the jobs load whole tensors (_diff_node): one frame per tensor
            raise RuntimeError(f"lossless diff writer got rows {rows} of {name}, not all of it")
        self.container.write(name, encode(self.raw.read(name), tuned, self.level))

    def close(self) -> list[Path]:
        return self.container.close()


class _DecodedFile:
    """A finished file of a killed run, re-checked on resume by what it decodes to."""

    def __init__(self, packed: LosslessDiffReader, raw: Source) -> None:
        self.packed, self.raw = packed, raw

    def manifest_entry(self, name: str) -> ManifestEntry:
        shape, payload = self.packed.info(name).shape, self.packed.read(name).numpy().data
        return ManifestEntry.of(decode(self.raw.read(name), payload, shape))


class LosslessRecoveredView(View):
    """The tuned model a lossless diff was made from, bit for bit: each tensor decoded while it
    is loaded (integer work, in the reader thread). Its tensors are checked against the diff's
    target manifest by whoever reads them. `forced` converts the plain float tensors (fp32, fp16,
    bf16; see weightkit.dtypes.output_dtype)."""

    lossless = True

    def __init__(
        self, raw: Source, diff: Path, forced: torch.dtype | None, target: Manifest | None
    ) -> None:
        self.raw, self.packed = raw, LosslessDiffReader(diff)
        self.label = f"recovered from {raw.label} and {self.packed.path}"
        pairing = pair_checkpoints(raw, self.packed, "diff")
        _check_dtypes(
            pairing,
            "the lossless diff",
            "A lossless diff adds bit patterns to the raw model's own; use the raw "
            "model in the dtypes it was made against (see "
            "weightkit.target-manifest.json).",
        )
        for p in pairing.pairs:
            _check_raw_shape(p, self.packed)
        self.expected = target
        self.pairs = {p.name: p for p in pairing.pairs}
        self.infos = {
            p.name: TensorInfo(p.name, _recovered_dtype(p, forced), p.other.shape, p.other.file)
            for p in pairing.pairs
        }
        self.notes = [*raw.notes, *pairing.notes()]

    def node(self, name: str) -> Node:
        p, raw, packed = self.pairs[name], self.raw, self.packed

        def load() -> tuple[torch.Tensor, ...]:
            # all the work happens here, in the reader thread, overlapping compute and writing
            r, payload = raw.read(p.name), packed.read(p.name)
            scratch = empty_bytes(p.other.nbytes)
            try:
                packed_ints = unpack(payload.numpy().data, p.other.dtype, p.other.numel, scratch)
            except zstandard.ZstdError as e:
                raise ChecksumError(
                    f"tensor {p.name!r} in {p.other.file}: the compressed data is damaged ({e})",
                    "Download the diff again (weightkit verify can tell which files are damaged).",
                ) from None
            tuned = add_back(r, packed_ints, p.other.shape)  # built in packed_ints' buffer
            for spent in (r, scratch, payload):  # reused by the next tensors: no fresh pages
                release(spent)
            return (tuned,)

        # decoded in load(): nothing left to compute (and no NaN/Inf check on the publisher's bits)
        return Node(self.infos[name], load, identity)

    @property
    def inputs(self) -> list[Path]:
        return [*self.raw.inputs, self.packed.path]

    def config(self) -> dict | None:
        config = folder_config(self.packed.folder)
        return config if config is not None else self.raw.config()

    def side_files(self) -> list[SideFiles]:
        """The diff's config and tokenizer files, then the raw model's where the diff has none."""
        return [folder_files(self.packed.folder), *self.raw.side_files()]


def _check_raw_shape(p: Pair, packed: LosslessDiffReader) -> None:
    raw_shape = packed.raw_shapes[p.name]
    if p.raw.shape != raw_shape:
        raise InputError(
            f"tensor {p.name!r} has shape {list(p.raw.shape)} in the raw model ({p.raw.file}), "
            f"the lossless diff was made against shape {list(raw_shape)}",
            "Check that `raw` is the base model this diff was made against.",
        )


def _recovered_dtype(p: Pair, dtype: torch.dtype | None) -> torch.dtype:
    return output_dtype(p.other.dtype, dtype)


def _check_dtypes(pairing: Pairing, other: str, hint: str) -> None:
    for p in pairing.pairs:
        if p.raw.dtype != p.other.dtype:
            raise InputError(
                f"tensor {p.name!r} is {short_name(p.raw.dtype)} in the raw model "
                f"({p.raw.file}) and {short_name(p.other.dtype)} in {other} "
                f"({p.other.file})",
                hint,
            )
