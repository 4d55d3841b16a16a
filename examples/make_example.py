"""Rebuild the shipped example: a tiny LLaMA-shaped model, its fine-tuned twin, and the diff.

    python examples/make_example.py

Deterministic (fixed seeds, pinned torch): running it again gives the same tensors, which the
tensor manifests in each folder prove.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from weightkit.ops.diff import diff

HERE = Path(__file__).resolve().parent / "tiny-llama"


def main() -> None:
    shutil.rmtree(HERE, ignore_errors=True)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config).to(torch.float16).eval()
    model.save_pretrained(HERE / "raw")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a stand-in for fine-tuning: each weight moves by ~1% of itself
        for p in model.parameters():
            p.add_((torch.randn(p.shape, generator=gen) * p.float().abs() * 1e-2).to(p.dtype))
    model.save_pretrained(HERE / "tuned")
    diff(HERE / "raw", HERE / "tuned", HERE / "diff", dtype="fp32")


if __name__ == "__main__":
    main()
