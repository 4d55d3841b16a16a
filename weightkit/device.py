"""Choosing where the arithmetic runs. The pipeline is the same on every device."""

from __future__ import annotations

import torch

from weightkit.errors import InputError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """auto -> cuda when a GPU is visible, else cpu; cuda without a GPU is an error."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(
                "--device cuda was asked for, but no CUDA device is available",
                "Use --device cpu or auto: the output bytes are the same.",
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {name!r}", "Use auto, cpu or cuda.")
