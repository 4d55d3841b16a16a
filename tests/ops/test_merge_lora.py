"""merge-lora against peft's own merge_and_unload(), on tiny models and real peft adapters."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import file_bytes
from lora_models import (
    build_base,
    compare,
    make_adapter,
    peft_merge,
    tensors,
    write_adapter_config,
)
from safetensors.torch import load_file, save_file

from weightkit import engine
from weightkit.errors import InputError
from weightkit.io.reader import Checkpoint
from weightkit.ops.merge_lora import merge_lora
from weightkit.options import WriteOptions

LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_ALL = ["c_attn", "c_proj", "c_fc"]

# case -> (base model kind, LoraConfig arguments; safe=False saves the legacy .bin)
CASES = {
    "plain": ("llama", dict(r=8, lora_alpha=16, target_modules=LLAMA_ALL)),
    "rslora": (
        "llama",
        dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj"]),
    ),
    "patterns": (
        "llama",
        dict(
            r=4,
            lora_alpha=8,
            target_modules=LLAMA_ALL,
            rank_pattern={"q_proj": 8, r"layers\.1\..*o_proj": 2},
            alpha_pattern={"model.layers.0.mlp.down_proj": 32, "v_proj": 3},
        ),
    ),
    "dora": (
        "llama",
        dict(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj", "up_proj"]),
    ),
    # Qwen2 with tie_word_embeddings: the checkpoint has no lm_head.weight
    "embedding": ("qwen2", dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"])),
    "tied_lm_head": ("qwen2", dict(r=4, lora_alpha=8, target_modules=["lm_head", "q_proj"])),
    "modules_to_save": (
        "llama",
        dict(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj"],
            modules_to_save=["lm_head", "input_layernorm"],
        ),
    ),
    "lora_bias": (
        "qwen2",
        dict(r=4, lora_alpha=8, lora_bias=True, target_modules=["q_proj", "k_proj", "v_proj"]),
    ),
    "fan_in_fan_out": (
        "gpt2",
        dict(r=4, lora_alpha=8, fan_in_fan_out=True, target_modules=GPT2_ALL),
    ),
    "dora_fan_in_fan_out": (
        "gpt2",
        dict(r=4, lora_alpha=8, use_dora=True, fan_in_fan_out=True, target_modules=GPT2_ALL),
    ),
    "legacy_bin": (
        "llama",
        dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], safe=False),
    ),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Where weightkit's output is not bit-identical to peft's, as measured: tensor -> (largest
# distance in ULPs, number of elements that differ). Everything else is equal bit for bit.
# peft autocasts adapters to fp32 and its in-place `W += delta` rounds once, as weightkit does;
# only Embedding.merge rounds the delta to the weight's dtype before adding (two roundings), so
# where W + delta nearly cancels the distance is many ULPs of the (tiny) result.
NOT_BIT_EXACT = {
    ("embedding", "fp16"): {"model.embed_tokens.weight": (113, 1812)},
    ("embedding", "bf16"): {"model.embed_tokens.weight": (14423, 1879)},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(case, dtype) -> folder with base/, adapter/ and peft's merge in ref/ (built once)."""
    cache: dict[tuple[str, str], Path] = {}

    def get(case: str, dtype: str) -> Path:
        if (case, dtype) not in cache:
            kind, kwargs = CASES[case]
            root = tmp_path_factory.mktemp(f"{case}-{dtype}")
            base = build_base(kind, DTYPES[dtype], root / "base")
            adapter = make_adapter(base, root / "adapter", DTYPES[dtype], **kwargs)
            peft_merge(base, adapter, root / "ref", DTYPES[dtype])
            cache[case, dtype] = root
        return cache[case, dtype]

    return get


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_equals_peft_merge_and_unload(built, case, dtype):
    root = built(case, dtype)
    result = merge_lora(root / "base", root / "adapter", root / "ours")
    got = compare(tensors(root / "ours"), tensors(root / "ref"))
    assert got.problems == []
    assert got.differ == NOT_BIT_EXACT.get((case, dtype), {})
    if dtype == "fp32":
        assert got.differ == {}  # bit for bit
    assert result.tensors == len(got.equal) + len(got.differ)
    assert (root / "ours" / "weightkit.manifest.json").is_file()
    assert (root / "ours" / "config.json").is_file()


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_embedding_difference_is_peft_rounding_the_delta(built, dtype):
    """The one case that differs: peft rounds the embedding delta first, weightkit does not."""
    root = built("embedding", dtype)
    merge_lora(root / "base", root / "adapter", root / "ours", options=WriteOptions(overwrite=True))
    name, prefix = "model.embed_tokens.weight", "base_model.model.model.embed_tokens."
    w = load_file(root / "base" / "model.safetensors")[name]
    lora = load_file(root / "adapter" / "adapter_model.safetensors")
    a, b = lora[prefix + "lora_embedding_A"].float(), lora[prefix + "lora_embedding_B"].float()
    delta = (b @ a).T * (8 / 4)
    assert torch.equal(tensors(root / "ref")[name], w + delta.to(w.dtype))  # two roundings
    assert torch.equal(tensors(root / "ours")[name], (w.float() + delta).to(w.dtype))  # one


@pytest.mark.parametrize("case", ["plain", "dora", "fan_in_fan_out", "lora_bias"])
def test_arithmetic_in_small_blocks_still_equals_peft(built, tmp_path, monkeypatch, case):
    """The widening add and the NaN/Inf check run a block of rows at a time; blocks of 3 rows
    and 100 values give the same bits as one block."""
    from weightkit.ops import merge_lora as module

    monkeypatch.setattr(module, "_BLOCK_BYTES", 3 * 64 * 4)
    monkeypatch.setattr(engine, "_CHECK_BLOCK", 100)
    root = built(case, "fp16")
    merge_lora(root / "base", root / "adapter", tmp_path / "ours")
    got = compare(tensors(tmp_path / "ours"), tensors(root / "ref"))
    assert got.problems == [] and got.differ == {}


def test_untouched_tensors_stream_in_pieces_with_the_same_bytes(
    built, tmp_path, small_pieces, monkeypatch
):
    """Tensors no adapter touches are copied in row pieces; merged ones stay whole (a product
    taken in pieces could sum in another order than peft's)."""
    root = built("plain", "fp16")
    merge_lora(root / "base", root / "adapter", tmp_path / "pieces")
    assert {name for name, _ in small_pieces} == {"model.embed_tokens.weight", "lm_head.weight"}
    monkeypatch.setattr(engine, "_PIECE", 2**40)
    merge_lora(root / "base", root / "adapter", tmp_path / "whole")
    assert file_bytes(tmp_path / "pieces") == file_bytes(tmp_path / "whole")


def test_upcast_output_equals_peft_in_fp32(built, tmp_path):
    """--dtype fp32 on an fp16 base equals peft merging the base loaded in fp32, bit for bit."""
    root = built("embedding", "fp16")
    peft_merge(root / "base", root / "adapter", tmp_path / "ref32", torch.float32)
    merge_lora(root / "base", root / "adapter", tmp_path / "ours", dtype="fp32")
    got = compare(tensors(tmp_path / "ours"), tensors(tmp_path / "ref32"))
    assert got.problems == [] and got.differ == {}


def test_bin_shards_load_in_transformers(built, tmp_path):
    """Tied Qwen2, sharded .bin output: it loads, and the model equals peft's merge."""
    from transformers import AutoModelForCausalLM

    root = built("embedding", "fp32")
    result = merge_lora(
        root / "base",
        root / "adapter",
        tmp_path / "ours",
        options=WriteOptions(format="bin", max_shard_size="100kB"),
    )
    assert len([f for f in result.files if f.endswith(".bin")]) > 1
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    ref = AutoModelForCausalLM.from_pretrained(root / "ref")
    assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()
    ref_state = ref.state_dict()
    for name, t in ours.state_dict().items():
        assert torch.equal(t, ref_state[name]), name


# ---------------------------------------------------------------- legacy adapter files


OLD_CONFIG = dict(  # alpaca-lora / KnowLM era: fields today's peft no longer has
    base_model_name_or_path="decapoda-research/llama-7b-hf",
    bias="none",
    enable_lora=None,
    fan_in_fan_out=False,
    inference_mode=True,
    lora_alpha=16,
    lora_dropout=0.05,
    merge_weights=False,
    modules_to_save=None,
    peft_type="LORA",
    r=8,
    target_modules=["q_proj", "v_proj"],
    task_type="CAUSAL_LM",
)


@pytest.mark.parametrize("layout", ["old_bin_fp16", "adapter_name_in_keys"])
def test_hand_written_legacy_adapter(built, tmp_path, layout):
    root = built("legacy_bin", "fp16")
    state = torch.load(root / "adapter" / "adapter_model.bin", weights_only=True)
    adapter = tmp_path / "adapter"
    if layout == "old_bin_fp16":  # torch.save of fp16 tensors, keys without the adapter name
        write_adapter_config(adapter, **OLD_CONFIG)
        torch.save({k: v.half() for k, v in state.items()}, adapter / "adapter_model.bin")
    else:  # keys as the peft model names them: ...lora_A.default.weight
        write_adapter_config(
            adapter,
            **{k: v for k, v in OLD_CONFIG.items() if k not in ("enable_lora", "merge_weights")},
        )
        renamed = {
            re.sub(r"\.lora_([AB])\.", r".lora_\1.default.", k): v.contiguous()
            for k, v in state.items()
        }
        save_file(renamed, adapter / "adapter_model.safetensors")
    peft_merge(root / "base", adapter, tmp_path / "ref", torch.float16)
    result = merge_lora(root / "base", adapter, tmp_path / "ours")
    ref = tensors(tmp_path / "ref")
    got = compare(tensors(tmp_path / "ours"), ref)
    assert got.problems == [] and got.differ == {}
    assert not torch.equal(
        ref["model.layers.0.self_attn.q_proj.weight"],
        tensors(root / "base")["model.layers.0.self_attn.q_proj.weight"],
    )
    warned = [n for n in result.notes if "unknown field" in n]
    assert bool(warned) == (layout == "old_bin_fp16")
    if warned:
        assert "'enable_lora', 'merge_weights'" in warned[0]


# ---------------------------------------------------------------- errors: nothing written


def _fails(base: Path, adapter: Path, out: Path, *parts: str) -> InputError:
    with pytest.raises(InputError) as e:
        merge_lora(base, adapter, out)
    text = str(e.value)
    for part in parts:
        assert part in text, (part, text)
    assert not out.exists()
    assert not any(p.name.startswith(f".{out.name}") for p in out.parent.iterdir())
    return e.value


def _copy_adapter(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_key_matching_no_base_tensor(built, tmp_path):
    root = built("plain", "fp32")
    adapter = _copy_adapter(root / "adapter", tmp_path / "adapter")
    state = load_file(adapter / "adapter_model.safetensors")
    state = {k.replace("layers.1.", "layers.7."): v for k, v in state.items()}
    save_file(state, adapter / "adapter_model.safetensors")
    _fails(
        root / "base",
        adapter,
        tmp_path / "out",
        "layers.7.",
        "does not have",
        str(root / "base"),
        "`base`",
    )


def test_shape_that_does_not_fit(built, tmp_path):
    root = built("plain", "fp32")
    other = build_base("llama", torch.float32, tmp_path / "base96", intermediate=96)
    _fails(
        other,
        root / "adapter",
        tmp_path / "out",
        "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight'",
        "[64, 128]",
        "[64, 96]",
        "model.safetensors",
        "check `base`",
    )


def test_extended_vocabulary(built, tmp_path):
    root = built("modules_to_save", "fp32")
    adapter = _copy_adapter(root / "adapter", tmp_path / "adapter")
    state = load_file(adapter / "adapter_model.safetensors")
    state["base_model.model.lm_head.weight"] = torch.zeros(160, 64)
    save_file(state, adapter / "adapter_model.safetensors")
    _fails(
        root / "base",
        adapter,
        tmp_path / "out",
        "has 160 rows",
        "'lm_head.weight' has 128",
        "extended vocabulary",
        "resize_token_embeddings(160)",
    )


def test_empty_adapter(built, tmp_path):
    """alpaca-lora's notorious 443-byte adapter_model.bin: an empty state dict."""
    root = built("plain", "fp32")
    adapter = tmp_path / "adapter"
    write_adapter_config(adapter, **OLD_CONFIG)
    torch.save({}, adapter / "adapter_model.bin")
    assert (adapter / "adapter_model.bin").stat().st_size < 2000  # 443 bytes with torch 1.x
    _fails(
        root / "base",
        adapter,
        tmp_path / "out",
        "holds no tensors",
        "alpaca-lora",
        "save_pretrained",
    )


def test_unsupported_method(built, tmp_path):
    from peft import LoHaConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = built("plain", "fp32")
    model = AutoModelForCausalLM.from_pretrained(root / "base")
    get_peft_model(model, LoHaConfig(r=4, target_modules=["q_proj"])).save_pretrained(
        tmp_path / "loha"
    )
    _fails(
        root / "base",
        tmp_path / "loha",
        tmp_path / "out",
        "peft_type is 'LOHA'",
        "LoRA adapters only",
        "merge_and_unload",
    )


def test_unsupported_variant_and_rank_mismatch(built, tmp_path):
    root = built("plain", "fp32")
    config = json.loads((root / "adapter" / "adapter_config.json").read_text())
    adapter = _copy_adapter(root / "adapter", tmp_path / "variant")
    write_adapter_config(adapter, **{**config, "use_bdlora": {"lora_a_is_blockdiagonal": []}})
    _fails(root / "base", adapter, tmp_path / "out", "use_bdlora", "does not support")
    adapter = _copy_adapter(root / "adapter", tmp_path / "rank")
    write_adapter_config(adapter, **{**config, "r": 4})
    _fails(
        root / "base",
        adapter,
        tmp_path / "out",
        "rank r=4",
        "has shape [8, ",
        "adapter_config.json",
    )


def test_missing_config(built, tmp_path):
    root = built("plain", "fp32")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    shutil.copy(root / "adapter" / "adapter_model.safetensors", adapter)
    _fails(root / "base", adapter, tmp_path / "out", "no adapter_config.json")


# ---------------------------------------------------------------- streaming and the CLI


def test_reads_one_base_tensor_and_only_its_adapter_tensors_at_a_time(built, tmp_path, monkeypatch):
    root = built("dora", "fp32")
    reads: list[tuple[str, str]] = []
    original = Checkpoint.read

    def read(self, name):
        reads.append(("adapter" if "adapter" in self.path.name else "base", name))
        return original(self, name)

    monkeypatch.setattr(Checkpoint, "read", read)
    merge_lora(root / "base", root / "adapter", tmp_path / "out")
    base_reads = [n for side, n in reads if side == "base"]
    assert sorted(base_reads) == sorted(set(base_reads))  # each base tensor read once
    current = None
    for side, name in reads:
        if side == "base":
            current = name
        else:  # an adapter tensor is read right after the base tensor it changes
            module = name.removeprefix("base_model.model.").split(".lora_")[0]
            assert current == f"{module}.weight", (name, current)
    adapter_reads = [n for side, n in reads if side == "adapter"]
    assert sorted(adapter_reads) == sorted(
        load_file(root / "adapter" / "adapter_model.safetensors")
    )


def test_cli(built, tmp_path, capsys):
    from weightkit.cli import main

    root = built("plain", "fp16")
    args = [
        "merge-lora",
        "--base",
        str(root / "base"),
        "--lora",
        str(root / "adapter"),
        "--out",
        str(tmp_path / "out"),
        "--dtype",
        "bf16",
        "--max-shard-size",
        "50kB",
    ]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0
    err = capsys.readouterr().err
    assert "merge-lora: wrote 21 tensors" in err and "Merged LoRA into 14 tensor(s)" in err
    assert all(t.dtype == torch.bfloat16 for t in tensors(tmp_path / "out").values())
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 1
    assert "already exists" in capsys.readouterr().err
