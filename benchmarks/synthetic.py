"""Synthetic LLaMA-shaped checkpoints for benchmarks: random weights, real names and shapes.

Sizes follow the TinyLlama / LLaMA family so that tensor sizes (and so per-tensor overheads)
are realistic. Generation is seeded; each shard is written with safetensors' own writer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# name -> (hidden, intermediate, layers, heads, kv_heads, vocab)
SHAPES = {
    "0.3B": (1024, 2816, 22, 16, 4, 32000),
    "1.1B": (2048, 5632, 22, 32, 4, 32000),
    "1.4B": (2048, 5632, 29, 32, 4, 32000),  # issue 14's family: 1.41B parameters
    # the LLaMA 1/2 layout (no GQA) that bench_convert.make_raw writes raw: dim 2048, 19 layers
    "1.1B-mha": (2048, 5632, 19, 32, 32, 32000),
    "3B": (3200, 8640, 26, 32, 32, 32000),
}


def tensor_shapes(size: str) -> dict[str, tuple[int, ...]]:
    hidden, inter, layers, heads, kv, vocab = SHAPES[size]
    head_dim = hidden // heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (hidden, hidden),
                p + "self_attn.k_proj.weight": (kv * head_dim, hidden),
                p + "self_attn.v_proj.weight": (kv * head_dim, hidden),
                p + "self_attn.o_proj.weight": (hidden, hidden),
                p + "mlp.gate_proj.weight": (inter, hidden),
                p + "mlp.up_proj.weight": (inter, hidden),
                p + "mlp.down_proj.weight": (hidden, inter),
                p + "input_layernorm.weight": (hidden,),
                p + "post_attention_layernorm.weight": (hidden,),
            }
        )
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def config(size: str) -> dict:
    hidden, inter, layers, heads, kv, vocab = SHAPES[size]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 2048,
        "torch_dtype": "float16",
    }


def write_model(
    folder: Path,
    size: str,
    dtype: torch.dtype,
    seed: int,
    scale: float = 0.02,
    shard_bytes: int = 2 * 10**9,
) -> int:
    """A random model in HF layout (sharded safetensors + index); returns its tensor bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size_now = total = 0
    for name, shape in tensor_shapes(size).items():
        t = (torch.randn(shape, generator=gen) * scale).to(dtype)
        if shards[-1] and size_now + t.nbytes > shard_bytes:
            shards.append({})
            size_now = 0
        shards[-1][name] = t
        size_now += t.nbytes
        total += t.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in shard})
        shards[i] = {}
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(config(size), indent=2))
    return total
