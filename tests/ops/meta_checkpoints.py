"""Tiny raw Meta LLaMA checkpoints, made by undoing the HF conversion of a tiny HF model.

Each case is a LlamaForCausalLM (hidden 64, 2 layers, 4 heads, fixed seed) split the way Meta's
model-parallel training saved it: q/k back in Meta's interleaved rotary layout, every matrix cut
over the consolidated.NN.pth shards, params.json and a tokenizer.model in the folders where Meta's
download scripts put them. Converting it back must give the HF model bit for bit.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from weightkit.ops.convert_llama import from_hf_rotary
from weightkit.ops.llama_tokenizer import LLAMA3_PATTERN

# a few KB of fixed text to train the tokenizers on
TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs! "
    "How vexingly quick daft zebras jump. Sphinx of black quartz, judge my vow. "
    "Weights are split over model-parallel shards; each shard holds a slice of every matrix. "
    "Numbers like 0123456789, 42 and 2048 appear too, as do (brackets), 'quotes' and dashes. "
) * 12
SENTENCE = "Hello world, the quick fox jumps over 123 lazy dogs!  Two  spaces, then\na newline."
SPM_VOCAB = 384  # 3 control pieces + 256 byte-fallback pieces + merges
TIKTOKEN_MERGES = 64  # ranks = 256 single bytes + these merges


@dataclass(frozen=True)
class Case:
    version: str
    dtype: torch.dtype
    shards: int
    params: dict
    layout: str  # "parent": tokenizer.model one folder up (LLaMA 1/2); "inside": next to weights
    folder_name: str
    config: dict = field(default_factory=dict)  # extra LlamaConfig arguments of the HF model


CASES = {
    "llama1": Case(
        "1",
        torch.float16,
        2,
        {
            "dim": 64,
            "multiple_of": 32,
            "n_heads": 4,
            "n_layers": 2,
            "norm_eps": 1e-06,
            "vocab_size": -1,
        },
        "parent",
        "13B",
    ),
    "llama2": Case(
        "2",
        torch.bfloat16,
        2,
        {
            "dim": 64,
            "multiple_of": 64,
            "ffn_dim_multiplier": 1.3,
            "n_heads": 4,
            "n_kv_heads": 2,
            "n_layers": 2,
            "norm_eps": 1e-05,
            "vocab_size": -1,
        },
        "parent",
        "llama-2-13b",
    ),
    "llama3": Case(
        "3",
        torch.bfloat16,
        2,
        {
            "dim": 64,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "vocab_size": 256 + TIKTOKEN_MERGES + 256,
            "multiple_of": 64,
            "ffn_dim_multiplier": 1.3,
            "norm_eps": 1e-05,
            "rope_theta": 500000.0,
        },
        "inside",
        "Meta-Llama-3-70B",
    ),
    "llama3.1": Case(
        "3.1",
        torch.bfloat16,
        2,
        {
            "dim": 64,
            "ffn_dim_multiplier": 1.3,
            "multiple_of": 64,
            "n_heads": 4,
            "n_kv_heads": 2,
            "n_layers": 2,
            "norm_eps": 1e-05,
            "rope_theta": 500000.0,
            "use_scaled_rope": True,
            "vocab_size": 256 + TIKTOKEN_MERGES + 256,
        },
        "inside",
        "Meta-Llama-3.1-70B",
        {
            "max_position_embeddings": 131072,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        },
    ),
    "llama3.2": Case(
        "3.2",
        torch.bfloat16,
        1,
        {
            "dim": 64,
            "ffn_dim_multiplier": 1.5,
            "multiple_of": 32,
            "n_heads": 4,
            "n_kv_heads": 2,
            "n_layers": 2,
            "norm_eps": 1e-05,
            "rope_theta": 500000.0,
            "use_scaled_rope": True,
            "vocab_size": 256 + TIKTOKEN_MERGES + 256,
        },
        "inside",
        "Llama3.2-1B",
        {
            "tie_word_embeddings": True,
            "max_position_embeddings": 131072,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        },
    ),
}


@dataclass
class RawCheckpoint:
    name: str  # its key in CASES
    case: Case
    input_dir: Path  # what to give `convert`
    model_size: str | None
    folder: Path  # the one with params.json and consolidated.*.pth
    tokenizer: Path
    hf_dir: Path  # the original HF model, save_pretrained
    model: object  # its LlamaForCausalLM


def build_raw(root: Path, name: str, seed: int = 0) -> RawCheckpoint:
    """The case's raw download under root/raw and its original HF model under root/hf."""
    case = CASES[name]
    raw = root / "raw"
    folder = raw / case.folder_name
    folder.mkdir(parents=True)
    tokenizer = (raw if case.layout == "parent" else folder) / "tokenizer.model"
    if case.version.startswith("3"):
        write_tiktoken(tokenizer)
        vocab = case.params["vocab_size"]
    else:
        write_sentencepiece(tokenizer)
        vocab = SPM_VOCAB
    model = tiny_model(case, vocab, seed)
    model.save_pretrained(root / "hf")
    (folder / "params.json").write_text(json.dumps(case.params))
    n_kv = case.params.get("n_kv_heads", case.params["n_heads"])
    for i, shard in enumerate(to_meta_shards(model.state_dict(), case, n_kv)):
        torch.save(shard, folder / f"consolidated.{i:02d}.pth")
    write_checklist(
        folder, ["params.json"] + [f"consolidated.{i:02d}.pth" for i in range(case.shards)]
    )
    if case.layout == "parent":
        write_checklist(raw, ["tokenizer.model"], "tokenizer_checklist.chk")
        return RawCheckpoint(
            name, case, raw, case.folder_name, folder, tokenizer, root / "hf", model
        )
    return RawCheckpoint(name, case, folder, None, folder, tokenizer, root / "hf", model)


def tiny_model(case: Case, vocab: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from weightkit.ops.llama_params import parse_params

    p = parse_params(case.params)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=p.dim,
        intermediate_size=p.intermediate_size,
        num_hidden_layers=p.n_layers,
        num_attention_heads=p.n_heads,
        num_key_value_heads=p.n_kv_heads,
        rms_norm_eps=p.norm_eps,
        rope_theta=p.rope_theta,
        **case.config,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # norms away from 1, so a wrong shard or name shows
        for name, w in model.named_parameters():
            noise = torch.randn(w.shape, generator=gen)
            w.copy_(1 + 0.1 * noise if "norm" in name else 0.05 * noise)
    return model.to(case.dtype).eval()


def to_meta_shards(
    state: dict[str, torch.Tensor], case: Case, n_kv: int
) -> list[dict[str, torch.Tensor]]:
    """The inverse of the conversion: HF names -> Meta names, split over the MP shards."""
    n, heads = case.shards, case.params["n_heads"]
    llama3 = case.version.startswith("3")
    split = {  # Meta name -> (HF tensor, dim split over shards or None if replicated)
        "tok_embeddings.weight": (state["model.embed_tokens.weight"], 0 if llama3 else 1),
        "norm.weight": (state["model.norm.weight"], None),
        "output.weight": (state["lm_head.weight"], 0),
    }
    for i in range(case.params["n_layers"]):
        hf = f"model.layers.{i}."
        split |= {
            f"layers.{i}.attention.wq.weight": (
                from_hf_rotary(state[hf + "self_attn.q_proj.weight"], heads),
                0,
            ),
            f"layers.{i}.attention.wk.weight": (
                from_hf_rotary(state[hf + "self_attn.k_proj.weight"], n_kv),
                0,
            ),
            f"layers.{i}.attention.wv.weight": (state[hf + "self_attn.v_proj.weight"], 0),
            f"layers.{i}.attention.wo.weight": (state[hf + "self_attn.o_proj.weight"], 1),
            f"layers.{i}.feed_forward.w1.weight": (state[hf + "mlp.gate_proj.weight"], 0),
            f"layers.{i}.feed_forward.w2.weight": (state[hf + "mlp.down_proj.weight"], 1),
            f"layers.{i}.feed_forward.w3.weight": (state[hf + "mlp.up_proj.weight"], 0),
            f"layers.{i}.attention_norm.weight": (state[hf + "input_layernorm.weight"], None),
            f"layers.{i}.ffn_norm.weight": (state[hf + "post_attention_layernorm.weight"], None),
        }
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for name, (w, dim) in split.items():
        pieces = [w] * n if dim is None else list(w.chunk(n, dim=dim))
        for shard, piece in zip(shards, pieces, strict=True):
            shard[name] = piece.clone()
    if case.version == "1":  # LLaMA 1 also saved its rotary table
        half = case.params["dim"] // heads // 2
        for shard in shards:
            shard["rope.freqs"] = torch.rand(half).to(case.dtype)
    return shards


def write_sentencepiece(path: Path) -> None:
    """A LLaMA-style sentencepiece BPE model (byte fallback, digits split, no normalization)."""
    import sentencepiece

    lines = [s.strip() + "." for s in TEXT.split(".") if s.strip()]
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=SPM_VOCAB,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        split_digits=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    path.write_bytes(buf.getvalue())


def train_bpe_ranks(text: str, merges: int) -> dict[bytes, int]:
    """Byte-level BPE as tiktoken ranks it: the 256 bytes, then each merge in the order learnt."""
    import regex

    ranks = {bytes([b]): b for b in range(256)}
    words = collections.Counter(
        tuple(bytes([c]) for c in w.encode()) for w in regex.findall(LLAMA3_PATTERN, text)
    )
    for _ in range(merges):
        pairs: collections.Counter = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        ranks[a + b] = len(ranks)
        words = collections.Counter({_merge(word, a, b): c for word, c in words.items()})
    return ranks


def _merge(word: tuple[bytes, ...], a: bytes, b: bytes) -> tuple[bytes, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def write_tiktoken(path: Path) -> None:
    """LLaMA 3's tokenizer.model format: one `base64(token) rank` line per token."""
    ranks = train_bpe_ranks(TEXT, TIKTOKEN_MERGES)
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))


def tiktoken_encoding(path: Path, version: str):
    """The original tokenizer, as Meta's tokenizer.py builds it."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from weightkit.ops.llama_tokenizer import llama3_special_tokens

    ranks = load_tiktoken_bpe(str(path))
    specials = {t: len(ranks) + i for i, t in enumerate(llama3_special_tokens(version))}
    return tiktoken.Encoding(
        path.name, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )


def write_checklist(folder: Path, names: list[str], file_name: str = "checklist.chk") -> None:
    lines = [f"{hashlib.md5((folder / n).read_bytes()).hexdigest()}  {n}\n" for n in names]
    (folder / file_name).write_text("".join(lines))
