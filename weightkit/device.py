"""Choosing where the arithmetic runs. The pipeline is the same on every device, and so are the
output bytes: a job that does not fit a GPU, or that must run on the CPU, runs there."""

from __future__ import annotations

from pathlib import Path

import torch

from weightkit.errors import InputError

_SAME_BYTES = "Use `device` cpu or auto: the output bytes are the same."
# what a driver, a device number or a torch build that does not fit raise when CUDA starts
_START_ERRORS = (RuntimeError, AssertionError, OSError)


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """auto -> cuda when a GPU is visible and starts, else cpu; cuda that cannot be used is
    an error that says why (checked here, before any thread touches the GPU)."""
    name = str(name)
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        try:
            return _started(torch.device("cuda"))
        except _START_ERRORS:
            return torch.device("cpu")  # a GPU that does not start: the CPU gives the same bytes
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            if torch.version.cuda is None and _nvidia_gpu_present():
                raise InputError(
                    f"`device` cuda was asked for, but this torch ({torch.__version__}) was "
                    "built without CUDA, though the machine has an NVIDIA GPU",
                    f"Install a CUDA build of torch to use it. {_SAME_BYTES}",
                )
            raise InputError(
                "`device` cuda was asked for, but no CUDA device is available", _SAME_BYTES
            )
        try:
            return _started(torch.device(name))
        except _START_ERRORS as e:
            raise InputError(
                f"`device` {name} was asked for, but CUDA does not start: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
                f"Check the GPU driver (nvidia-smi) and the device number. {_SAME_BYTES}",
            ) from None
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {name!r}", "Use auto, cpu or cuda.")


def _started(device: torch.device) -> torch.device:
    """The device, after CUDA has started on it and can pin host memory (the reader thread's
    first pinned buffer would otherwise be where a broken driver shows, as a raw error)."""
    torch.cuda.init()
    torch.empty(1, device=device)
    torch.empty(1, pin_memory=True)
    return device


def _nvidia_gpu_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or any(Path("/dev").glob("nvidia[0-9]*"))
