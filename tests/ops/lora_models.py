"""Tiny base models and real peft adapters for the merge-lora tests, and peft's own merge.

Imported by the tests as a plain module (pytest puts tests/ops on sys.path). Everything is built
with a fixed seed; the adapters get nonzero B (and A, magnitude, biases) so the merge matters.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

# case name -> how its base model and adapter are made
KINDS = ("llama", "qwen2", "gpt2")


def build_base(
    kind: str, dtype: torch.dtype, folder: Path, seed: int = 0, intermediate: int = 128
) -> Path:
    """A 2-layer model with hidden 64 and vocab 128, saved with save_pretrained."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    common = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    elif kind == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)
        )
    else:
        raise ValueError(kind)
    with torch.no_grad():  # nonzero biases and norms, so replacing or adding to them shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or ".ln_" in name:
                p.add_(torch.randn(p.shape) * 0.1)
    model.to(dtype).save_pretrained(folder)
    return folder


def make_adapter(
    base: Path, folder: Path, dtype: torch.dtype, seed: int = 1, safe: bool = True, **lora_kwargs
) -> Path:
    """A real peft adapter: get_peft_model + LoraConfig on the base, with random nonzero
    weights wherever peft initialises zeros, saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model

    model = _load(base, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, LoraConfig(**lora_kwargs))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if any(part in name for part in ("lora_", "modules_to_save")):
                noise = torch.randn(p.shape, generator=gen)
                if "lora_magnitude_vector" in name:
                    p.mul_(1 + 0.05 * noise.to(p.dtype))
                else:
                    p.copy_((noise * 0.05).to(p.dtype))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model.save_pretrained(folder, safe_serialization=safe)
    return folder


def peft_merge(base: Path, adapter: Path, out: Path, dtype: torch.dtype) -> Path:
    """The reference: PeftModel.from_pretrained(base).merge_and_unload(), saved in `dtype`."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = PeftModel.from_pretrained(_load(base, dtype), adapter).merge_and_unload()
        merged.save_pretrained(out)
    return out


def _load(folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def ordered(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 bits as integers that count representable values, so b - a is in ULPs."""
    bits = t.contiguous().view(torch.int16).to(torch.int32)
    return torch.where(bits < 0, -(bits & 0x7FFF), bits)


@dataclass
class Comparison:
    equal: list[str] = field(default_factory=list)
    # tensor -> (max ULP distance, number of elements that differ)
    differ: dict[str, tuple[int, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # missing, extra, other dtype or shape


def compare(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> Comparison:
    c = Comparison()
    for name in sorted(set(ours) | set(ref)):
        a, b = ours.get(name), ref.get(name)
        if a is None or b is None:
            c.problems.append(f"{name}: {'missing from ours' if a is None else 'not in peft'}")
        elif a.dtype != b.dtype or a.shape != b.shape:
            c.problems.append(f"{name}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}")
        elif torch.equal(a, b):
            c.equal.append(name)
        elif a.dtype in (torch.float16, torch.bfloat16):
            ulps = (ordered(a) - ordered(b)).abs()
            c.differ[name] = (int(ulps.max()), int((ulps > 0).sum()))
        else:
            c.differ[name] = (-1, int((a != b).sum()))  # fp32: not bit-exact, no ULP count
    return c


def write_adapter_config(folder: Path, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(fields, indent=1))
