"""Choosing the device: each way CUDA can be missing or broken is one clear message, up front."""

from __future__ import annotations

import pytest
import torch

from weightkit import device as module
from weightkit.device import resolve_device
from weightkit.errors import InputError


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cuda_asked_for_with_a_cpu_only_torch_on_a_gpu_machine(no_cuda, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(module, "_nvidia_gpu_present", lambda: True)
    with pytest.raises(InputError) as e:
        resolve_device("cuda")
    assert str(e.value) == (
        f"`device` cuda was asked for, but this torch ({torch.__version__}) was built without "
        "CUDA, though the machine has an NVIDIA GPU\nInstall a CUDA build of torch to use it. "
        "Use `device` cpu or auto: the output bytes are the same."
    )
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_asked_for_without_a_gpu(no_cuda, monkeypatch):
    monkeypatch.setattr(module, "_nvidia_gpu_present", lambda: False)
    with pytest.raises(InputError) as e:
        resolve_device("cuda:0")
    assert str(e.value) == (
        "`device` cuda was asked for, but no CUDA device is available\n"
        "Use `device` cpu or auto: the output bytes are the same."
    )


def test_cuda_that_does_not_start_is_one_error_and_auto_takes_the_cpu(monkeypatch):
    def broken() -> None:
        raise RuntimeError(
            "CUDA driver initialization failed, you might not have a CUDA gpu.\nmore lines"
        )

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "init", broken)
    with pytest.raises(InputError) as e:
        resolve_device("cuda")
    assert str(e.value) == (
        "`device` cuda was asked for, but CUDA does not start: CUDA driver initialization "
        "failed, you might not have a CUDA gpu.\nCheck the GPU driver (nvidia-smi) and the "
        "device number. Use `device` cpu or auto: the output bytes are the same."
    )
    assert resolve_device("auto") == torch.device("cpu")


def test_cpu_and_unknown_names():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")
