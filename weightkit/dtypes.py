"""Names of dtypes as users type them, as safetensors stores them, and as torch knows them; and
the rules that depend on a dtype: which arithmetic a tensor gets, which dtype holds another
exactly, how its NaN/Inf are told, how a result is rounded into it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from weightkit.errors import InputError


def _torch(name: str) -> torch.dtype | None:
    return getattr(torch, name, None)  # newer dtypes: absent from older torch releases


# Every dtype the safetensors format defines (its `Dtype` enum, safetensors/src/tensor.rs), with
# the torch dtype that holds it; None where torch has none (6-bit floats), or not this torch.
FORMAT_DTYPES: dict[str, torch.dtype | None] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": _torch("uint64"),
    "U32": _torch("uint32"),
    "U16": _torch("uint16"),
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": _torch("float8_e4m3fn"),
    "F8_E5M2": _torch("float8_e5m2"),
    "F8_E4M3FNUZ": _torch("float8_e4m3fnuz"),
    "F8_E5M2FNUZ": _torch("float8_e5m2fnuz"),
    "F8_E8M0": _torch("float8_e8m0fnu"),
    "F4": _torch("float4_e2m1fn_x2"),  # two 4-bit values a byte: see `from_header`
    "F6_E2M3": None,
    "F6_E3M2": None,
    "C64": torch.complex64,
}
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    name: d for name, d in FORMAT_DTYPES.items() if d is not None
}
TORCH_TO_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}
_PACKED_FP4 = SAFETENSORS_DTYPES.get("F4")

# what users type on the command line
USER_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}

# Plain floats: what weights are trained and merged in, and what --dtype converts.
FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# 8-bit floats: torch converts them to and from the others but will not mix them with another
# dtype in one operation ("Promotion for Float8 Types is not supported"), so arithmetic widens
# them first (`widen`) and rounds into them explicitly (`round_to`).
FP8_DTYPES = tuple(
    SAFETENSORS_DTYPES[n]
    for n in ("F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0")
    if n in SAFETENSORS_DTYPES
)

# The dtypes that hold every value of some others exactly (checked value by value in
# tests/test_dtypes.py); each holds itself too. fp16 lacks the exponent range of E8M0's 2**±127.
_HOLDS: dict[torch.dtype, set[torch.dtype]] = {
    torch.float16: {d for d in FP8_DTYPES if d != _torch("float8_e8m0fnu")},
    torch.bfloat16: set(FP8_DTYPES),
    torch.float32: {torch.float16, torch.bfloat16, *FP8_DTYPES},
    torch.float64: {torch.float32, torch.float16, torch.bfloat16, *FP8_DTYPES},
}

# NaN/Inf of the 8- and 4-bit floats, told from their bits (torch has no isfinite or sum for most
# of them): byte & mask == value marks one. E5M2 is fp16's top byte (exponent all ones: Inf or
# NaN); E4M3FN has no Inf and one NaN per sign (S.1111.111); the FNUZ formats have no Inf and no
# -0, their NaN is 0x80; E8M0 is an exponent alone, 0xFF is NaN; packed fp4 has neither.
NON_FINITE_BITS: dict[torch.dtype, tuple[int, int] | None] = {
    d: bits
    for name, bits in (
        ("float8_e5m2", (0x7C, 0x7C)),
        ("float8_e4m3fn", (0x7F, 0x7F)),
        ("float8_e4m3fnuz", (0xFF, 0x80)),
        ("float8_e5m2fnuz", (0xFF, 0x80)),
        ("float8_e8m0fnu", (0xFF, 0xFF)),
        ("float4_e2m1fn_x2", None),
    )
    if (d := _torch(name)) is not None
}


def parse_dtype(name: str) -> torch.dtype:
    """fp32/fp16/bf16 (or their long names) -> torch dtype."""
    try:
        return USER_DTYPES[name.lower()]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}", "Use one of: fp32, fp16, bf16.") from None


def short_name(dtype: torch.dtype) -> str:
    """torch.float16 -> 'fp16'; other dtypes by their torch name."""
    for name, d in USER_DTYPES.items():
        if d == dtype and len(name) <= 4:
            return name
    return str(dtype).removeprefix("torch.")


def safetensors_name(dtype: torch.dtype) -> str:
    try:
        return TORCH_TO_SAFETENSORS[dtype]
    except KeyError:
        raise InputError(f"dtype {dtype} cannot be stored in safetensors") from None


def torch_dtype(name: str, where: str) -> torch.dtype:
    """A safetensors dtype name (in a header or a manifest) -> torch dtype.

    Raises KeyError for a name the format does not define (a garbled header: the caller says
    so), InputError naming `where` for one that this torch has no dtype for.
    """
    dtype = FORMAT_DTYPES[name]
    if dtype is None:
        raise InputError(
            f"{where} is stored as {name}, a dtype of the safetensors format that torch "
            f"{torch.__version__} cannot hold",
            "Upgrade torch if a newer one has this dtype, or have the tensor saved in another "
            "dtype by the tool that made it.",
        )
    return dtype


def from_header(name: str, shape: list[int], where: str) -> tuple[torch.dtype, tuple[int, ...]]:
    """A safetensors header's dtype name and shape -> the torch dtype and shape of the tensor.

    F4's header counts 4-bit values, torch's float4_e2m1fn_x2 counts bytes of two: its last
    dimension is halved. Errors as for `torch_dtype`, and InputError for an F4 shape that
    does not pack into bytes.
    """
    dtype = torch_dtype(name, where)
    if dtype != _PACKED_FP4:
        return dtype, tuple(shape)
    if not shape or shape[-1] % 2:
        raise InputError(
            f"{where} is F4 of shape {shape}: 4-bit values are stored two a byte, "
            "so the last dimension must be even; the header is damaged",
            "The file is damaged; download it again.",
        )
    return dtype, (*shape[:-1], shape[-1] // 2)


def to_header(dtype: torch.dtype, shape: tuple[int, ...]) -> tuple[str, list[int]]:
    """torch dtype and shape -> a safetensors header's dtype name and shape (see `from_header`)."""
    name = safetensors_name(dtype)
    if dtype == _PACKED_FP4:
        return name, [*shape[:-1], shape[-1] * 2]
    return name, list(shape)


def is_float(dtype: torch.dtype) -> bool:
    """Whether a tensor gets value arithmetic (diff, recover): widened to fp32 (fp64 with an fp64
    side), added or subtracted and rounded once. Other dtypes (integers, bool, complex, packed
    fp4) are combined bit for bit (weightkit.ops.delta.subtract_bits), which is exact."""
    return dtype in FLOAT_DTYPES or dtype in FP8_DTYPES


def output_dtype(stored: torch.dtype, forced: torch.dtype | None) -> torch.dtype:
    """The dtype a tensor that would be written as `stored` is written in under `dtype` `forced`:
    plain floats take it; others keep theirs (8-bit floats are quantized weights that live with
    their scales, and integers, bool, complex and packed fp4 are not weights to round)."""
    return forced if forced is not None and stored in FLOAT_DTYPES else stored


def wider(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """The narrowest float dtype that holds both exactly; fp16 with bf16 gives fp32, an 8-bit
    float with fp16 gives fp16 (E8M0: bf16)."""
    if a == b:
        return a
    for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        if {a, b} <= {d, *_HOLDS[d]}:
            return d
    raise ValueError(f"no dtype holds both {a} and {b}")  # pairing refuses such pairs first


def widen(x: torch.Tensor) -> torch.Tensor:
    """x, or for an 8-bit float its exact fp32 copy: the form arithmetic can mix with others."""
    return x.to(torch.float32) if x.dtype in FP8_DTYPES else x


def round_to(x: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """A float result rounded once to `dtype`, to nearest even.

    Into an 8-bit float, a finite value half a step or more past its largest one is refused:
    torch would write E4M3FN's largest value for it without a word (Inf or NaN for the others).
    """
    if dtype in FP8_DTYPES and x.numel():
        limit = _overflow_limit(dtype)
        lo, hi = torch.aminmax(x)
        if not max(-float(lo), float(hi)) < limit:  # NaN also lands here: counted below
            over = int((torch.isfinite(x) & (x.abs() >= limit)).sum())
            if over:
                raise InputError(
                    f"tensor {name!r}: {over} value(s) of the result lie beyond the range of "
                    f"{safetensors_name(dtype)} (largest {torch.finfo(dtype).max:g})",
                    "The tuned model stores it in that dtype, so the inputs do not fit each "
                    "other: check that `raw` is the model the diff was made against.",
                )
    return x.to(dtype)


def _overflow_limit(dtype: torch.dtype) -> float:
    """Half a step past the largest finite value: from there on, rounding would overflow."""
    info = torch.finfo(dtype)
    return info.max + 2.0 ** math.floor(math.log2(info.max)) * info.eps / 2


def count_non_finite(x: torch.Tensor) -> int:
    """How many elements are NaN or Inf (0 for dtypes without them)."""
    if x.dtype in NON_FINITE_BITS:
        bits = NON_FINITE_BITS[x.dtype]
        if bits is None:
            return 0
        mask, value = bits
        return int((x.view(torch.uint8) & mask).eq_(value).sum())
    if not x.is_floating_point():
        return 0
    return int((~torch.isfinite(x)).sum())


# flat bit patterns: unsigned integers of each width, and a torch dtype of that width numpy knows
UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
SIGNED = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
SAME_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bit_patterns(t: torch.Tensor) -> np.ndarray:
    """The tensor's bit patterns as flat unsigned integers of its width: a view (writes go to the
    tensor) when it is contiguous on the CPU, else a copy."""
    width = t.dtype.itemsize
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(SAME_WIDTH[width]).numpy().view(UNSIGNED[width])
