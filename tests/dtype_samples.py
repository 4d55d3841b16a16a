"""Tensors of every dtype safetensors defines that torch holds, with random bit patterns."""

from __future__ import annotations

import torch

# the dtypes that are not plain floats, by their safetensors names (as safetensors' own torch
# binding maps them)
OTHER_DTYPES = {
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "F8_E8M0": torch.float8_e8m0fnu,
    "F4": torch.float4_e2m1fn_x2,
    "C64": torch.complex64,
}
INTEGER_DTYPES = {
    n: OTHER_DTYPES[n] for n in ("U8", "U16", "U32", "U64", "I8", "I16", "I32", "I64", "BOOL")
}
# the ones diff and recover combine bit for bit (no value arithmetic)
BITWISE_DTYPES = {**INTEGER_DTYPES, "F4": torch.float4_e2m1fn_x2, "C64": torch.complex64}


def sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random bits over the dtype's whole width for integers and packed fp4 (bool: 0 or 1),
    random finite values for the floats and complex."""
    gen = torch.Generator().manual_seed(seed)
    n = 1
    for d in shape:
        n *= d
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype == torch.float8_e8m0fnu:  # exponents alone, 2**-10..2**10 (as scales are)
        return torch.randint(117, 138, shape, generator=gen, dtype=torch.uint8).view(dtype)
    if dtype.is_floating_point and dtype != torch.float4_e2m1fn_x2 or dtype.is_complex:
        return (torch.randn(shape, generator=gen) * 3).to(dtype)
    raw = torch.randint(0, 256, (n * dtype.itemsize,), generator=gen, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


def byte_values(t: torch.Tensor) -> bytes:
    """The tensor's raw little-endian bytes."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
