"""The dtype rules: names, which dtype holds which, NaN/Inf of small floats, explicit rounding."""

from __future__ import annotations

import pytest
import torch

from weightkit.dtypes import (
    FP8_DTYPES,
    NON_FINITE_BITS,
    count_non_finite,
    from_header,
    output_dtype,
    round_to,
    to_header,
    torch_dtype,
    wider,
)
from weightkit.errors import InputError

E4M3, E5M2, E8M0 = torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e8m0fnu
ALL_BYTES = torch.arange(256, dtype=torch.uint8)


def holds(wide: torch.dtype, narrow: torch.dtype) -> bool:
    """Every value of the 8- or 16-bit `narrow` survives a trip through `wide`, bit for bit
    (NaN: stays NaN)."""
    bits = (
        ALL_BYTES
        if narrow.itemsize == 1
        else torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    )
    values = bits.view(narrow)
    nan = torch.isnan(values.to(torch.float64))
    through = values.to(wide)
    return torch.equal(through.to(narrow).view(bits.dtype)[~nan], bits[~nan]) and bool(
        torch.isnan(through.to(torch.float64))[nan].all()
    )


@pytest.mark.parametrize("a", [*FP8_DTYPES, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b", [*FP8_DTYPES, torch.float16, torch.bfloat16])
def test_wider_holds_both_exactly_and_nothing_narrower_does(a, b):
    w = wider(a, b)
    assert w == wider(b, a) and wider(a, torch.float32) == torch.float32
    assert holds(w, a) and holds(w, b)
    if a != b:  # and the ones wider() tries first do not
        order = [torch.float16, torch.bfloat16, torch.float32]
        assert not any(holds(d, a) and holds(d, b) for d in order[: order.index(w)])


def test_wider_of_the_usual_pairs():
    assert wider(torch.float16, torch.bfloat16) == torch.float32
    assert wider(torch.float16, torch.float32) == torch.float32
    assert wider(torch.float32, torch.float64) == torch.float64
    assert wider(E4M3, torch.float16) == torch.float16
    assert wider(E4M3, E5M2) == torch.float16
    assert wider(E8M0, torch.float16) == torch.float32  # 2**127 is not an fp16 value
    assert wider(E8M0, E4M3) == torch.bfloat16


@pytest.mark.parametrize("dtype", sorted(NON_FINITE_BITS, key=str))
def test_non_finite_bits_agree_with_torch_on_every_pattern(dtype):
    if dtype == torch.float4_e2m1fn_x2:  # no NaN or Inf in E2M1, and torch cannot widen it
        assert count_non_finite(ALL_BYTES.view(dtype)) == 0
        return
    values = ALL_BYTES.view(dtype)
    want = ~torch.isfinite(values.to(torch.float32))
    assert count_non_finite(values) == int(want.sum()) > 0
    for i in range(256):  # and byte by byte, so that the right ones are counted
        assert count_non_finite(values[i : i + 1]) == int(want[i]), (dtype, hex(i))


def test_non_finite_of_other_dtypes():
    assert count_non_finite(torch.tensor([1.0, float("nan"), float("inf")]).half()) == 2
    assert count_non_finite(torch.zeros(5, dtype=torch.uint16)) == 0
    assert count_non_finite(torch.tensor([True, False])) == 0


def test_round_to_e4m3_refuses_what_torch_would_clamp():
    ok = torch.tensor([448.0, -463.9, 0.3, float("nan")])
    assert round_to(ok, E4M3, "w").view(torch.uint8).tolist() == [0x7E, 0xFE, 0x2A, 0x7F]
    assert torch.tensor([464.0]).to(E4M3).float().item() == 448.0  # what torch does alone
    with pytest.raises(InputError) as e:
        round_to(torch.tensor([1.0, 464.0, -1e4, float("inf")]), E4M3, "w")
    assert str(e.value) == (
        "tensor 'w': 2 value(s) of the result lie beyond the range of F8_E4M3 (largest 448)\n"
        "The tuned model stores it in that dtype, so the inputs do not fit each other: check "
        "that `raw` is the model the diff was made against."
    )


def test_round_to_e5m2_refuses_overflow_that_would_be_inf():
    assert round_to(torch.tensor([57344.0, 61439.0]), E5M2, "w").float().tolist() == [57344.0] * 2
    with pytest.raises(InputError, match=r"1 value\(s\) .* F8_E5M2 \(largest 57344\)"):
        round_to(torch.tensor([61440.0]), E5M2, "w")


def test_round_to_other_dtypes_is_a_plain_conversion():
    x = torch.tensor([1e6, 1 / 3])
    assert torch.equal(round_to(x, torch.float16, "w"), x.half())


def test_f4_shapes_count_values_in_the_header_and_bytes_in_torch():
    fp4 = torch.float4_e2m1fn_x2
    assert from_header("F4", [3, 8], "t") == (fp4, (3, 4))
    assert to_header(fp4, (3, 4)) == ("F4", [3, 8])
    assert to_header(torch.uint16, (3, 4)) == ("U16", [3, 4])
    with pytest.raises(
        InputError,
        match=r"^t is F4 of shape \[3, 7\]: 4-bit values are stored "
        "two a byte",
    ):
        from_header("F4", [3, 7], "t")


def test_dtypes_torch_cannot_hold_are_named():
    with pytest.raises(InputError) as e:
        torch_dtype("F6_E2M3", "model.safetensors: tensor 'w'")
    assert str(e.value) == (
        f"model.safetensors: tensor 'w' is stored as F6_E2M3, a dtype of the safetensors format "
        f"that torch {torch.__version__} cannot hold\nUpgrade torch if a newer one has this "
        "dtype, or have the tensor saved in another dtype by the tool that made it."
    )
    with pytest.raises(KeyError):  # not a safetensors dtype at all: the header is garbled
        torch_dtype("F7", "t")


def test_forced_dtype_converts_plain_floats_only():
    assert output_dtype(torch.float32, torch.bfloat16) == torch.bfloat16
    assert output_dtype(torch.float16, None) == torch.float16
    for kept in (E4M3, torch.uint16, torch.bool, torch.complex64, torch.float4_e2m1fn_x2):
        assert output_dtype(kept, torch.bfloat16) == kept
