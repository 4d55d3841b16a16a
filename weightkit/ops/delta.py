"""The arithmetic of weight diffs, shared by `diff` and `recover` so that both agree bit for bit.

diff = tuned - raw and tuned = raw + diff, each computed in fp32 (fp64 if an input is fp64) and
rounded once. When the tuned model has more vocabulary rows than raw, the extra rows of the diff
are the tuned rows themselves.
"""

from __future__ import annotations

import torch


def accumulate_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype the arithmetic runs in: fp64 if any side is fp64, else fp32 (ints: int64)."""
    if not all(d.is_floating_point for d in dtypes):
        return torch.int64
    return torch.float64 if torch.float64 in dtypes else torch.float32


def subtract(raw: torch.Tensor, tuned: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    acc = accumulate_dtype(raw.dtype, tuned.dtype, out_dtype)
    d = tuned.to(acc, copy=True)
    _shared_rows(d, raw).sub_(raw.to(acc))
    return d.to(out_dtype)


def add(raw: torch.Tensor, diff: torch.Tensor, out_dtype: torch.dtype,
        reuse_diff: bool = False) -> torch.Tensor:
    """raw + diff; with `reuse_diff` the sum is built in diff's buffer when its dtype allows
    (the streaming path owns a fresh buffer per tensor, so this saves a copy per tensor)."""
    acc = accumulate_dtype(raw.dtype, diff.dtype, out_dtype)
    t = diff.to(acc, copy=not reuse_diff)
    # in-place add with type promotion: raw is widened element by element, exactly as
    # raw.to(acc) would, without a widened copy of raw
    _shared_rows(t, raw).add_(raw)
    return t.to(out_dtype)


def _shared_rows(x: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """The part of `x` that raw also has (all of it unless the vocabulary was extended)."""
    return x[: raw.shape[0]] if x.dim() and x.shape[0] != raw.shape[0] else x
