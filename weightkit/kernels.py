"""Elementwise arithmetic over cache-sized blocks, into buffers the caller gives.

A tensor-wide op makes a tensor-sized temporary (a page fault per 4 KiB of fresh memory) and
walks memory once per op; torch's mixed-dtype ops take a slow per-element path. Here each block
of at most `BLOCK` elements is widened, added or subtracted and rounded while it sits in the
cache, in per-thread scratch that is allocated once. Blocks are below torch's grain size, so
every op runs in the calling thread: no OpenMP team competes with the reader and writer threads.

The bits are those of the tensor-wide ops: widening is exact, the arithmetic is one IEEE
operation per element in the accumulation dtype, and the rounding is one cast.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Callable, Iterator

import torch

# Elements per block: below torch's GRAIN_SIZE (32768), which keeps an op in the calling thread;
# a multiple of 256 keeps every block's start aligned for the vector units.
BLOCK = 32768 - 256
_local = threading.local()

# The one NaN every result holds (the positive quiet NaN without payload, what float("nan")
# becomes in each dtype): CPUs and GPUs make NaNs of other signs and payloads.
CANONICAL_NAN = {
    torch.float16: 0x7E00,
    torch.bfloat16: 0x7FC0,
    torch.float32: 0x7FC00000,
    torch.float64: 0x7FF8000000000000,
}
_SAME_WIDTH_INT = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


# torch's intra-op threads as the process started with them (the rank-r products of merge-lora
# run with these, as they always have)
DEFAULT_THREADS = torch.get_num_threads()


def pipeline_threads() -> int:
    """Intra-op threads while a pipeline runs: the reader and the writer thread each keep a
    core busy, so on 2 cores an op split over 2 OpenMP threads waits for a core (its workers
    spin meanwhile: measured, the NaN/Inf check's share of the compute thread went from 5 % to
    40 % of its samples under load)."""
    return max(1, min(DEFAULT_THREADS, (os.cpu_count() or 1) - 2))


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` meanwhile (threads started meanwhile inherit
    it; it does not change the bits of elementwise ops)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def scratch(slot: int, dtype: torch.dtype, numel: int = BLOCK) -> torch.Tensor:
    """This thread's scratch number `slot` of `numel` elements in `dtype`, allocated once (a
    cache-sized buffer: the pool's are for tensor-sized ones)."""
    key = (slot, dtype, numel)
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    if key not in bufs:
        bufs[key] = torch.empty(numel, dtype=dtype)
    return bufs[key]


def _blocks(out: torch.Tensor, *inputs: torch.Tensor) -> zip:
    """Matching blocks of out (contiguous, written in place) and of the inputs."""
    if not out.is_contiguous():
        raise ValueError("blocked kernels write into contiguous tensors only")
    flat = (
        [t.view(-1) for t in (out, *inputs)]
        if all(t.is_contiguous() for t in inputs)
        else [out.view(-1), *(t.reshape(-1) for t in inputs)]
    )
    return zip(*(torch.split(t, BLOCK) for t in flat), strict=True)


def round_into(out: torch.Tensor, src: torch.Tensor, widen_first: bool = False) -> torch.Tensor:
    """out = src cast to out's dtype (one rounding), block by block.

    `widen_first` casts through fp32, two vectorised casts that take half the time of torch's
    direct fp16 <-> bf16 cast; for sources without NaN only, where the paths' bits differ
    (a NaN becomes 0xFFFF one way, 0x7FC0 the other).
    """
    if out.device.type != "cpu" or src.device.type != "cpu":
        return out.copy_(src)
    if widen_first and out.dtype != src.dtype and torch.float32 not in (out.dtype, src.dtype):
        s0 = scratch(0, torch.float32)
        for o, s in _blocks(out, src):
            o.copy_(s0[: s.numel()].copy_(s))
        return out
    for o, s in _blocks(out, src):
        o.copy_(s)
    return out


def combine_into(
    out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, acc: torch.dtype, subtract: bool = False
) -> torch.Tensor:
    """out = round(widen(a) ± widen(b)), the sum or difference taken in `acc`.

    The same bits as `a.to(acc) + b.to(acc)` (or `-`) rounded to out's dtype, NaN payloads
    aside (callers canonicalize NaNs, see `canonicalize_nans`).
    """
    if out.device.type != "cpu":
        op = torch.sub if subtract else torch.add
        return out.copy_(op(a.to(acc), b.to(acc)))
    op = torch.sub if subtract else torch.add
    wa, wb = a.dtype != acc, b.dtype != acc
    s0, s1 = scratch(0, acc), scratch(1, acc)
    for o, x, y in _blocks(out, a, b):
        n = o.numel()
        if wa:
            x = s0[:n].copy_(x)
        if wb:
            y = s1[:n].copy_(y)
        if out.dtype == acc:
            op(x, y, out=o)
        else:
            op(x, y, out=s0[:n])
            o.copy_(s0[:n])
    return out


def canonicalize_nans(t: torch.Tensor) -> torch.Tensor:
    """Every NaN of `t` becomes CANONICAL_NAN[t.dtype], in place (other dtypes: unchanged)."""
    ints = _SAME_WIDTH_INT.get(t.dtype)
    if ints is not None:
        t.view(ints).masked_fill_(torch.isnan(t), CANONICAL_NAN[t.dtype])
    return t


@functools.cache
def _memcmp() -> Callable[..., int] | None:
    try:
        f = ctypes.CDLL(None).memcmp
    except (OSError, AttributeError):
        return None
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return f


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two contiguous CPU tensors hold the same bytes (memcmp: 10x torch.equal)."""
    if a.nbytes != b.nbytes:
        return False
    memcmp = _memcmp()
    if memcmp is None or not (a.is_contiguous() and b.is_contiguous()):
        ints = torch.uint8
        return torch.equal(a.contiguous().view(-1).view(ints), b.contiguous().view(-1).view(ints))
    return a.nbytes == 0 or memcmp(a.data_ptr(), b.data_ptr(), a.nbytes) == 0
