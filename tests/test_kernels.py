"""The blocked kernels give the bits of the tensor-wide ops they replace, on edge values."""

from __future__ import annotations

import pytest
import torch

from weightkit import kernels
from weightkit.kernels import CANONICAL_NAN, canonicalize_nans, combine_into, round_into, same_bytes

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTS = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def edge_values(dtype: torch.dtype, n: int, seed: int) -> torch.Tensor:
    """Random values around every scale of `dtype`, with its subnormals, ±0, ±max (sums that
    overflow), ±inf, and values that round to a tie in the narrower dtypes."""
    gen = torch.Generator().manual_seed(seed)
    info = torch.finfo(dtype)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    x *= torch.pow(2.0, torch.randint(-30, 30, (n,), generator=gen).double())
    special = torch.tensor(
        [
            0.0,
            -0.0,
            info.tiny,
            -info.tiny,
            info.tiny / 4,
            info.max,
            -info.max,
            float("inf"),
            float("-inf"),
            1 + 2**-11,
            1 + 3 * 2**-11,
            1 + 2**-8,
            65504.0,
            65520.0,
            -65520.0,
            2**-24,
            2**-25,
        ],
        dtype=torch.float64,
    )
    x[: len(special)] = special
    return x.to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    return canonicalize_nans(t.clone()).view(INTS[t.dtype])


@pytest.mark.parametrize("out_dtype", FLOATS)
@pytest.mark.parametrize("b_dtype", FLOATS)
@pytest.mark.parametrize("a_dtype", FLOATS)
@pytest.mark.parametrize("subtract", [False, True])
def test_combine_equals_widen_then_add_then_round(a_dtype, b_dtype, out_dtype, subtract):
    n = 2 * kernels.BLOCK + 77  # three blocks, the last one short
    a, b = edge_values(a_dtype, n, 0), edge_values(b_dtype, n, 1)
    acc = torch.float64 if torch.float64 in (a_dtype, b_dtype, out_dtype) else torch.float32
    want = (a.to(acc) - b.to(acc) if subtract else a.to(acc) + b.to(acc)).to(out_dtype)
    got = combine_into(torch.empty(n, dtype=out_dtype), a, b, acc, subtract)
    assert torch.equal(bits(got), bits(want))


def test_combine_in_place_into_its_first_input():
    a, b = edge_values(torch.float32, 50_000, 0), edge_values(torch.float16, 50_000, 1)
    want = (a + b.float()).clone()
    got = combine_into(a, a, b, torch.float32)
    assert got.data_ptr() == a.data_ptr() and torch.equal(bits(got), bits(want))


def test_round_into_and_non_contiguous_inputs():
    a = edge_values(torch.float32, 40_000, 2).view(200, 200)
    assert torch.equal(
        bits(round_into(torch.empty(200, 200, dtype=torch.float16), a.T)),
        bits(a.T.to(torch.float16)),
    )


@pytest.mark.parametrize("dtype", FLOATS)
def test_every_nan_becomes_the_canonical_one_and_nothing_else_changes(dtype):
    ints = INTS[dtype]
    width = dtype.itemsize * 8
    exponent_bits = {torch.float16: 5, torch.bfloat16: 8, torch.float32: 8, torch.float64: 11}
    quiet = 1 << (width - 1 - exponent_bits[dtype] - 1)
    all_ones = ((1 << exponent_bits[dtype]) - 1) << (width - 1 - exponent_bits[dtype])
    nans = [all_ones | quiet, all_ones | 1, all_ones | quiet | 5]  # quiet, signalling, payload
    nans += [n | (1 << (width - 1)) for n in nans]  # and negative
    patterns = torch.tensor(
        [n - (1 << width) if n >= 1 << (width - 1) else n for n in nans], dtype=ints
    )
    finite = edge_values(dtype, 20, 3)
    t = torch.cat([patterns.view(dtype), finite])
    canonicalize_nans(t)
    assert t[: len(nans)].view(ints).tolist() == [CANONICAL_NAN[dtype]] * len(nans)
    assert torch.equal(t[len(nans) :].view(ints), finite.view(ints))  # inf and -0 untouched
    assert torch.tensor(float("nan"), dtype=dtype).view(ints).item() == CANONICAL_NAN[dtype]


def test_same_bytes_tells_signed_zeros_apart():
    a = torch.tensor([0.0, 1.0], dtype=torch.float16)
    assert same_bytes(a, a.clone())
    assert not same_bytes(a, torch.tensor([-0.0, 1.0], dtype=torch.float16))
    assert not same_bytes(a, a[:1])


@pytest.mark.parametrize(
    ("src", "dst"), [(torch.float16, torch.bfloat16), (torch.bfloat16, torch.float16)]
)
def test_a_cast_through_fp32_gives_the_direct_casts_bits(src, dst):
    x = edge_values(src, 3 * kernels.BLOCK + 5, 4)
    want = x.to(dst)
    got = round_into(torch.empty(x.shape, dtype=dst), x, widen_first=True)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))  # no NaN: same bits
