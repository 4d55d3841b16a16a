"""The arithmetic of weight diffs, shared by `diff` and `recover` so that both agree bit for bit.

diff = tuned - raw and tuned = raw + diff, each computed in fp32 (fp64 if an input is fp64) and
rounded once. When the tuned model has more vocabulary rows than raw, the extra rows of the diff
are the tuned rows themselves. The work runs a cache-sized block at a time (weightkit.kernels)
into a buffer from the run's pool; the result's NaNs, if any, are made canonical by the pipeline
(and by `add` for diff's prediction of what recover will give).
"""

from __future__ import annotations

import torch

from weightkit.io.buffers import empty_tensor
from weightkit.kernels import combine_into, round_into


def accumulate_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype the arithmetic runs in: fp64 if any side is fp64, else fp32 (ints: int64)."""
    if not all(d.is_floating_point for d in dtypes):
        return torch.int64
    return torch.float64 if torch.float64 in dtypes else torch.float32


def subtract(raw: torch.Tensor, tuned: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    return _combine(tuned, raw, out_dtype, subtract=True)


def add(raw: torch.Tensor, diff: torch.Tensor, out_dtype: torch.dtype,
        reuse_diff: bool = False) -> torch.Tensor:
    """raw + diff; with `reuse_diff` the sum is built in diff's buffer when diff already has
    the accumulation and output dtype (the streaming path owns its input buffers, so this
    saves one buffer per piece in flight). Otherwise it goes into a new (pooled) tensor."""
    return _combine(diff, raw, out_dtype, reuse=reuse_diff)


def _combine(full: torch.Tensor, raw: torch.Tensor, out_dtype: torch.dtype,
             subtract: bool = False, reuse: bool = False) -> torch.Tensor:
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
