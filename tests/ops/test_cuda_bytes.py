"""--device cuda writes the same bytes as --device cpu: recover, diff and merge-lora (DoRA,
fan_in_fan_out, embedding, bias), with a vocabulary extension and NaNs. Skipped without CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import file_bytes
from lora_models import build_base, make_adapter
from safetensors.torch import load_file, save_file

from weightkit.ops.diff import diff
from weightkit.ops.merge_lora import merge_lora
from weightkit.ops.recover import recover
from weightkit.options import WriteOptions

# WEIGHTKIT_OTHER_DEVICE=cpu runs these comparisons without a GPU (a check of the test itself)
OTHER = os.environ.get("WEIGHTKIT_OTHER_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    OTHER == "cuda" and not torch.cuda.is_available(), reason="no CUDA device"
)


def on_both(make, tmp_path: Path) -> dict[str, bytes]:
    """make(out, device) on the CPU and on the other device: every output file the same."""
    make(tmp_path / "cpu", "cpu")
    make(tmp_path / "other", OTHER)
    cpu, other = file_bytes(tmp_path / "cpu"), file_bytes(tmp_path / "other")
    assert sorted(cpu) == sorted(other)
    for name in cpu:
        assert cpu[name] == other[name], name
    return cpu


def with_nans(folder: Path, name: str) -> None:
    """Puts NaNs of both signs, a payload NaN, ±inf, subnormals and -0 into one tensor."""
    state = load_file(folder / "model.safetensors")
    t = state[name]
    ints = torch.tensor([0x7E01, -0x0200, 0x7C00, -0x0400, 0x0001, -0x8000], dtype=torch.int16)
    t.view(-1)[: len(ints)] = ints.view(torch.float16)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("diff_dtype", ["fp32", "fp16"])
def test_diff_and_recover(model_pair, tmp_path, diff_dtype):
    raw, tuned = model_pair("llama", torch.float16, extra_vocab=1)
    with_nans(tuned, "model.norm.weight")
    with_nans(raw, "model.layers.0.input_layernorm.weight")
    made = on_both(
        lambda out, dev: diff(raw, tuned, out, dtype=diff_dtype, options=WriteOptions(device=dev)),
        tmp_path / "diff",
    )
    assert "weightkit.target-manifest.json" in made
    on_both(
        lambda out, dev: recover(
            raw, tmp_path / "diff" / "cpu", out, options=WriteOptions(device=dev)
        ),
        tmp_path / "recover",
    )
    on_both(
        lambda out, dev: recover(
            raw, tmp_path / "diff" / "cpu", out, dtype="bf16", options=WriteOptions(device=dev)
        ),
        tmp_path / "recover-bf16",
    )


CASES = {
    "plain": (
        "llama",
        dict(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0
        ),
    ),
    "dora": (
        "llama",
        dict(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj", "up_proj"]),
    ),
    "fan_in_fan_out": (
        "gpt2",
        dict(r=4, lora_alpha=8, fan_in_fan_out=True, target_modules=["c_attn", "c_proj", "c_fc"]),
    ),
    "embedding": ("qwen2", dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"])),
    "lora_bias": (
        "qwen2",
        dict(r=4, lora_alpha=8, lora_bias=True, target_modules=["q_proj", "k_proj", "v_proj"]),
    ),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_merge_lora(tmp_path, case, dtype):
    kind, kwargs = CASES[case]
    base = build_base(kind, dtype, tmp_path / "base")
    adapter = make_adapter(base, tmp_path / "adapter", dtype, **kwargs)
    on_both(
        lambda out, dev: merge_lora(base, adapter, out, options=WriteOptions(device=dev)),
        tmp_path / "merged",
    )
