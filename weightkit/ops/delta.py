"""The arithmetic of weight diffs, shared by `diff` and `recover` so that both agree bit for bit.

diff = tuned - raw and tuned = raw + diff, each computed in fp32 (fp64 if an input is fp64) and
rounded once. When the tuned model has more vocabulary rows than raw, the extra rows of the diff
are the tuned rows themselves. The work runs a cache-sized block at a time (weightkit.kernels)
into a buffer from the run's pool; the result's NaNs, if any, are made canonical by the pipeline
(and by `add` for diff's prediction of what recover will give).

`subtract_any` and `add_any` take every dtype pair that weightkit.ops.pairing accepts: 8-bit
floats are widened to fp32 first (torch will not mix them with another dtype) and a result in one
is rounded explicitly; tensors that are not floats (integers, bool, complex, packed fp4) get the
difference of their bit patterns modulo 2**bits, in their own dtype (XOR for bool), which is exact
both ways. For signed and 8-bit integers and bool these are the bytes `subtract` gives (int64,
cast back): a tensor the fine-tune left alone gets a diff of zeros. Only the bit form is exact for
uint64 and adds bool back right (int64 arithmetic turns True + True into True).
"""

from __future__ import annotations

import numpy as np
import torch

from weightkit.dtypes import FP8_DTYPES, bit_patterns, is_float, round_to, widen
from weightkit.io.buffers import empty_tensor
from weightkit.kernels import combine_into, round_into


def accumulate_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype the arithmetic runs in: fp64 if any side is fp64, else fp32 (ints: int64)."""
    if not all(d.is_floating_point for d in dtypes):
        return torch.int64
    return torch.float64 if torch.float64 in dtypes else torch.float32


def subtract(raw: torch.Tensor, tuned: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    return _combine(tuned, raw, out_dtype, subtract=True)


def add(
    raw: torch.Tensor, diff: torch.Tensor, out_dtype: torch.dtype, reuse_diff: bool = False
) -> torch.Tensor:
    """raw + diff; with `reuse_diff` the sum is built in diff's buffer when diff already has
    the accumulation and output dtype (the streaming path owns its input buffers, so this
    saves one buffer per piece in flight). Otherwise it goes into a new (pooled) tensor."""
    return _combine(diff, raw, out_dtype, reuse=reuse_diff)


def _combine(
    full: torch.Tensor,
    raw: torch.Tensor,
    out_dtype: torch.dtype,
    subtract: bool = False,
    reuse: bool = False,
) -> torch.Tensor:
    """full ± raw over raw's rows; `full`'s own value (rounded) on the rows only it has."""
    acc = accumulate_dtype(raw.dtype, full.dtype, out_dtype)
    if acc == torch.int64:  # integer tensors: small, and wrap-around must match torch's
        t = full.to(acc, copy=True)
        shared = _shared_rows(t, raw)
        if subtract:
            shared.sub_(raw.to(acc))
        else:
            shared.add_(raw)
        return t.to(out_dtype)
    if reuse and full.dtype == acc == out_dtype and full.is_contiguous():
        out = full  # block by block in place: each block is read before it is written
    elif full.device.type == "cpu":
        out = empty_tensor(full.shape, out_dtype)
    else:
        out = torch.empty(full.shape, dtype=out_dtype, device=full.device)
    rows = raw.shape[0] if full.dim() and full.shape[0] != raw.shape[0] else None
    if rows is None:
        return combine_into(out, full, raw, acc, subtract)
    combine_into(out[:rows], full[:rows], raw, acc, subtract)
    round_into(out[rows:], full[rows:])  # widening is exact: one rounding either way
    return out


def _shared_rows(x: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """The part of `x` that raw also has (all of it unless the vocabulary was extended)."""
    return x[: raw.shape[0]] if x.dim() and x.shape[0] != raw.shape[0] else x


def subtract_any(
    raw: torch.Tensor, tuned: torch.Tensor, out_dtype: torch.dtype, name: str
) -> torch.Tensor:
    """`subtract` for every dtype (see the module's docstring); `name` is for error messages."""
    if not is_float(tuned.dtype):
        return subtract_bits(raw, tuned)
    raw, tuned = widen(raw), widen(tuned)
    if out_dtype not in FP8_DTYPES:
        return subtract(raw, tuned, out_dtype)
    return round_to(subtract(raw, tuned, accumulate_dtype(raw.dtype, tuned.dtype)), out_dtype, name)


def add_any(
    raw: torch.Tensor,
    diff: torch.Tensor,
    out_dtype: torch.dtype,
    name: str,
    reuse_diff: bool = False,
) -> torch.Tensor:
    """`add` for every dtype (see the module's docstring); `name` is for error messages."""
    if not is_float(diff.dtype):
        return add_bits(raw, diff, reuse_diff)
    raw, diff = widen(raw), widen(diff)
    if out_dtype not in FP8_DTYPES:
        return add(raw, diff, out_dtype, reuse_diff)
    return round_to(
        add(raw, diff, accumulate_dtype(raw.dtype, diff.dtype), reuse_diff), out_dtype, name
    )


def subtract_bits(raw: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """tuned - raw of the bit patterns, wrapping (XOR for bool), in a new CPU tensor."""
    d = tuned.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
    _combine_bits(_shared_rows(d, raw), raw, np.subtract)
    return d


def add_bits(raw: torch.Tensor, diff: torch.Tensor, reuse_diff: bool = False) -> torch.Tensor:
    """raw + diff of the bit patterns, wrapping (XOR for bool), on the CPU; with `reuse_diff` in
    diff's buffer when it is a contiguous CPU tensor."""
    t = diff.detach()
    if not (reuse_diff and t.device.type == "cpu" and t.is_contiguous()):
        t = t.to("cpu", memory_format=torch.contiguous_format, copy=True)
    _combine_bits(_shared_rows(t, raw), raw, np.add)
    return t


def _combine_bits(x: torch.Tensor, raw: torch.Tensor, op: np.ufunc) -> None:
    """x = op(x, raw) on unsigned bit patterns, in place (x contiguous on the CPU)."""
    if x.dtype == torch.bool:  # values 0 and 1 only: add and subtract modulo 2 are both XOR
        x.bitwise_xor_(raw.cpu())
        return
    bits = bit_patterns(x)
    op(bits, bit_patterns(raw), out=bits)
