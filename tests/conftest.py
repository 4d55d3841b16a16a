"""Tiny checkpoints built on the fly with a fixed seed (a few hundred kB each)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from ops.meta_checkpoints import RawCheckpoint


def build_model(kind: str, dtype: torch.dtype, seed: int = 0, vocab: int = 128):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen2MoeConfig,
        Qwen2MoeForCausalLM,
    )

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    elif kind == "qwen2-moe":
        model = Qwen2MoeForCausalLM(
            Qwen2MoeConfig(
                **common,
                moe_intermediate_size=32,
                shared_expert_intermediate_size=64,
                num_experts=4,
                num_experts_per_tok=2,
            )
        )
    else:
        raise ValueError(kind)
    return model.to(dtype).eval()


def fine_tune(model, seed: int = 1, scale: float = 1e-2, extra_vocab: int = 0):
    """A stand-in for training: every weight moves by about `scale` of its magnitude."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen).to(p.dtype)
            p.add_(noise * p.abs() * scale)
        if extra_vocab:
            model.resize_token_embeddings(model.config.vocab_size + extra_vocab)
            for p in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
                p[-extra_vocab:] = torch.randn(p[-extra_vocab:].shape, generator=gen).to(p.dtype)
    return model


def save_bin_shards(state: dict[str, torch.Tensor], folder: Path, shards: int) -> None:
    """KnowLM's layout: pytorch_model-0000X-of-0000N.bin written by torch.save, plus the index."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(state)
    per = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        fname = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n].contiguous() for n in names[i * per : (i + 1) * per]}
        torch.save(part, folder / fname)
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, read through weightkit's own reader."""
    from weightkit.io.reader import open_checkpoint

    ckpt = open_checkpoint(folder)
    return {name: ckpt.read(name) for name in ckpt.names()}


def state_of(model) -> dict[str, torch.Tensor]:
    """What save_pretrained writes: tied weights once."""
    from safetensors.torch import load_file

    return load_file(Path(model) / "model.safetensors")


@pytest.fixture
def model_pair(tmp_path: Path):
    """model_pair(kind, dtype) -> (raw_dir, tuned_dir), saved with save_pretrained."""

    def make(
        kind: str = "llama",
        dtype: torch.dtype = torch.float16,
        extra_vocab: int = 0,
        scale: float = 1e-2,
        tuned_dtype: torch.dtype | None = None,
    ) -> tuple[Path, Path]:
        raw_dir, tuned_dir = tmp_path / f"{kind}-raw", tmp_path / f"{kind}-tuned"
        model = build_model(kind, tuned_dtype or dtype)
        model.to(dtype).save_pretrained(raw_dir)
        model.to(tuned_dtype or dtype)
        fine_tune(model, scale=scale, extra_vocab=extra_vocab).save_pretrained(tuned_dir)
        return raw_dir, tuned_dir

    return make


@pytest.fixture
def small_pieces(monkeypatch):
    """Make the pipeline cut every tensor it can into pieces of at most 700 bytes (real runs
    cut at 16 MiB); returns the (name, rows) of every piece written."""
    import weightkit.engine as engine
    from weightkit.io.writer import ShardWriter

    monkeypatch.setattr(engine, "_PIECE", 700)
    written: list[tuple[str, tuple[int, int]]] = []
    original = ShardWriter.write

    def write(self, name, tensor, rows=None):
        if rows is not None:
            written.append((name, rows))
        return original(self, name, tensor, rows)

    monkeypatch.setattr(ShardWriter, "write", write)
    return written


def file_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of an output folder, by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def make_meta(tmp: Path) -> Path:
    """A raw Meta LLaMA-2-shaped checkpoint in 2 model-parallel shards (no tokenizer)."""
    dim, layers, inter, vocab = 512, 6, 1536, 2048
    gen = torch.Generator().manual_seed(5)
    folder = tmp / "meta"
    folder.mkdir()
    (folder / "params.json").write_text(
        json.dumps(
            {
                "dim": dim,
                "n_layers": layers,
                "n_heads": 8,
                "n_kv_heads": 8,
                "multiple_of": 256,
                "norm_eps": 1e-5,
                "vocab_size": vocab,
            }
        )
    )
    for shard in range(2):
        state = {
            "tok_embeddings.weight": torch.randn(vocab, dim // 2, generator=gen),
            "norm.weight": torch.ones(dim),
            "output.weight": torch.randn(vocab // 2, dim),
        }
        for i in range(layers):
            p = f"layers.{i}."
            for w in (
                "attention.wq",
                "attention.wk",
                "attention.wv",
                "feed_forward.w1",
                "feed_forward.w3",
            ):
                rows = dim // 2 if w.startswith("attention") else inter // 2
                state[p + w + ".weight"] = torch.randn(rows, dim, generator=gen)
            state[p + "attention.wo.weight"] = torch.randn(dim, dim // 2, generator=gen)
            state[p + "feed_forward.w2.weight"] = torch.randn(dim, inter // 2, generator=gen)
            state[p + "attention_norm.weight"] = torch.ones(dim)
            state[p + "ffn_norm.weight"] = torch.ones(dim)
        torch.save({k: v.half() for k, v in state.items()}, folder / f"consolidated.0{shard}.pth")
    return folder


def make_fused_inputs(tmp: Path) -> tuple[Path, Path, Path]:
    """(raw Meta folder, diff, LoRA adapter) for a 45 MB convert -> recover -> merge-lora: the
    diff made by `weightkit diff` against the converted model (so it carries a target manifest),
    the adapter on every up_proj."""
    from safetensors.torch import load_file, save_file

    from weightkit.ops.convert_llama import convert_llama
    from weightkit.ops.diff import diff

    meta = make_meta(tmp)
    convert_llama(meta, tmp / "converted")
    state = load_file(tmp / "converted" / "model.safetensors")
    gen = torch.Generator().manual_seed(1)
    (tmp / "tuned").mkdir()
    save_file(
        {
            n: (t.float() + torch.randn(t.shape, generator=gen) * 1e-3).half()
            for n, t in state.items()
        },
        tmp / "tuned" / "model.safetensors",
    )
    diff(tmp / "converted", tmp / "tuned", tmp / "diff")
    shutil.rmtree(tmp / "converted")
    shutil.rmtree(tmp / "tuned")
    lora = tmp / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["up_proj"]})
    )
    save_file(
        {
            f"base_model.model.model.layers.{i}.mlp.up_proj.{part}.weight": torch.randn(
                shape, generator=gen
            )
            * 1e-2
            for i in range(6)
            for part, shape in (("lora_A", (8, 512)), ("lora_B", (1536, 8)))
        },
        lora / "adapter_model.safetensors",
    )
    return meta, tmp / "diff", lora


# ---------------------------------------------------------------- a world for the fused chains

CHAIN_LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])


@dataclass
class World:
    meta: RawCheckpoint  # raw Meta LLaMA 2 (bf16, 2 model-parallel shards, tokenizer one up)
    converted: Path  # `weightkit convert` of it
    meta_b: RawCheckpoint  # another raw model of the same shapes (another seed)
    converted_b: Path
    tuned: Path  # the converted model fine-tuned (save_pretrained: config, no tokenizer)
    diff: Path  # `weightkit diff --raw converted --tuned tuned` (fp32, with a target manifest)
    adapter: Path  # a LoRA trained on the tuned model
    base_adapter: Path  # a LoRA trained on the converted model


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    """Every kind of input of every role (tests/ops/test_chains.py, tests/hub/test_sources.py);
    no test writes into it."""
    from ops.lora_models import make_adapter
    from ops.meta_checkpoints import build_raw
    from transformers import AutoModelForCausalLM

    from weightkit.ops.convert_llama import convert_llama
    from weightkit.ops.diff import diff

    root = tmp_path_factory.mktemp("world")
    meta = build_raw(root / "a", "llama2")
    meta_b = build_raw(root / "b", "llama2", seed=1)
    convert_llama(meta.folder, root / "converted")
    convert_llama(meta_b.folder, root / "converted-b")
    model = AutoModelForCausalLM.from_pretrained(root / "converted", dtype=torch.bfloat16)
    fine_tune(model).save_pretrained(root / "tuned")
    diff(root / "converted", root / "tuned", root / "diff")
    make_adapter(root / "tuned", root / "adapter", torch.bfloat16, **CHAIN_LORA)
    make_adapter(root / "converted", root / "base-adapter", torch.bfloat16, seed=2, **CHAIN_LORA)
    return World(
        meta,
        root / "converted",
        meta_b,
        root / "converted-b",
        root / "tuned",
        root / "diff",
        root / "adapter",
        root / "base-adapter",
    )


def run_role(world: World, role: str, given: str | Path, out: Path):
    """The command that takes a model in `role`, with `given` there and the world elsewhere."""
    from weightkit.ops.diff import diff
    from weightkit.ops.merge_lora import merge_lora
    from weightkit.ops.recover import recover

    if role == "raw":
        return recover(given, world.diff, out)
    if role == "diff":
        return recover(world.converted, given, out)
    if role == "tuned":
        return diff(world.converted, given, out)
    if role == "base":
        return merge_lora(given, world.base_adapter, out)
    return merge_lora(world.converted, given, out)
