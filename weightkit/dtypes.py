"""Names of dtypes as users type them, as safetensors stores them, and as torch knows them."""

from __future__ import annotations

import torch

from weightkit.errors import InputError

# safetensors header name <-> torch dtype
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
TORCH_TO_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}

# what users type on the command line
USER_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def parse_dtype(name: str) -> torch.dtype:
    """fp32/fp16/bf16 (or their long names) -> torch dtype."""
    try:
        return USER_DTYPES[name.lower()]
    except KeyError:
        raise InputError(
            f"unknown dtype {name!r}", "Use one of: fp32, fp16, bf16."
        ) from None


def short_name(dtype: torch.dtype) -> str:
    """torch.float16 -> 'fp16'; other dtypes by their torch name."""
    for name, d in USER_DTYPES.items():
        if d == dtype and len(name) <= 4:
            return name
    return str(dtype).removeprefix("torch.")


def wider(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """The dtype that holds both without loss; fp16 with bf16 gives fp32."""
    if a == b:
        return a
    if torch.float32 in (a, b) or {a, b} == {torch.float16, torch.bfloat16}:
        return torch.float64 if torch.float64 in (a, b) else torch.float32
    return torch.promote_types(a, b)


def safetensors_name(dtype: torch.dtype) -> str:
    try:
        return TORCH_TO_SAFETENSORS[dtype]
    except KeyError:
        raise InputError(f"dtype {dtype} cannot be stored in safetensors") from None
