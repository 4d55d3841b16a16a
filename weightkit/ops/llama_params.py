"""Meta's `params.json`: which LLaMA it describes, and the HF config the transformers converter
(`convert_llama_weights_to_hf.py`) writes for it.

Pure functions of the parsed params, so each rule can be tested without weights.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightkit.errors import InputError
from weightkit.io.sniff import JSON_FILE, what_it_is

VERSIONS = ("1", "2", "3", "3.1", "3.2")
# model size -> model-parallel shards Meta ships it in (the converter's table)
NUM_SHARDS = {
    "1B": 1,
    "3B": 1,
    "7B": 1,
    "8B": 1,
    "13B": 2,
    "30B": 4,
    "34B": 4,
    "65B": 8,
    "70B": 8,
    "405B": 8,
    "405B-MP16": 16,
}
CONTEXT_LENGTH = {"1": 2048, "2": 4096, "3": 8192, "3.1": 131072, "3.2": 131072}
LONG_CONTEXT = 16384  # what the converter gives LLaMA 1/2-style models with a raised rope_theta
LLAMA3_SPECIAL_TOKENS = 256  # reserved ids after the tiktoken ranks: <|begin_of_text|> is the 1st
ROPE_SCALING_FACTOR = {"3.1": 8.0, "3.2": 32.0}
LLAMA32_MAX_DIM = 3072  # 3.2 text models are 1B (dim 2048) and 3B (3072); 3.1's smallest is 4096


@dataclass(frozen=True)
class LlamaParams:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    vocab_size: int | None  # None when params.json says -1 (LLaMA 1/2: set by the tokenizer)
    rope_theta: float
    multiple_of: int
    ffn_dim_multiplier: float
    use_scaled_rope: bool
    rope_scaling_factor: float | None
    gqa: bool  # params.json names n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.n_kv_heads

    @property
    def intermediate_size(self) -> int:
        # the SwiGLU width of Meta's FeedForward, rounded up as model.py does
        hidden = int(self.ffn_dim_multiplier * int(8 * self.dim / 3))
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


def read_params(path: Path) -> LlamaParams:
    """Parse params.json; an error names the file and the missing or wrong key."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"{path}: no params.json here",
            "Point `input_dir` at the folder Meta's download put params.json in.",
        ) from None
    except (OSError, ValueError) as e:
        wrong = what_it_is(path, JSON_FILE) if isinstance(e, ValueError) else None
        raise wrong or InputError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(doc).__name__}")
    doc = doc.get("model", doc)  # some releases nest the model arguments
    return parse_params(doc, str(path))


def parse_params(doc: dict[str, Any], where: str = "params.json") -> LlamaParams:
    def need(key: str) -> Any:
        if key not in doc:
            raise InputError(f"{where}: no {key!r} key", "Is this a Meta LLaMA params.json?")
        return doc[key]

    dim, n_layers, n_heads = int(need("dim")), int(need("n_layers")), int(need("n_heads"))
    n_kv_heads = doc.get("n_kv_heads")
    vocab = doc.get("vocab_size")
    p = LlamaParams(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(n_kv_heads) if n_kv_heads is not None else n_heads,
        norm_eps=float(need("norm_eps")),
        vocab_size=int(vocab) if vocab is not None and int(vocab) > 0 else None,
        rope_theta=float(doc.get("rope_theta") or 10000.0),
        multiple_of=int(doc.get("multiple_of") or 256),
        ffn_dim_multiplier=float(doc.get("ffn_dim_multiplier") or 1),
        use_scaled_rope=bool(doc.get("use_scaled_rope", False)),
        rope_scaling_factor=(
            float(doc["rope_scaling_factor"]) if doc.get("rope_scaling_factor") else None
        ),
        gqa=n_kv_heads is not None,
    )
    if dim % n_heads or p.head_dim % 2 or n_heads % p.n_kv_heads:
        raise InputError(
            f"{where}: dim {dim}, n_heads {n_heads}, n_kv_heads {p.n_kv_heads} do "
            "not split into whole, even-sized heads"
        )
    return p


def detect_version(p: LlamaParams, tokenizer_kind: str | None = None) -> tuple[str, str]:
    """(version, the evidence) from params.json and the tokenizer format, if known.

    A sentencepiece tokenizer with LLaMA 3 params (or tiktoken with LLaMA 1/2 params) is refused:
    the inputs do not belong together, or the caller must say which LLaMA this is.
    """
    if p.rope_scaling_factor:
        version = "3.2" if p.rope_scaling_factor >= ROPE_SCALING_FACTOR["3.2"] else "3.1"
        why = f"rope_scaling_factor {p.rope_scaling_factor:g}"
    elif p.use_scaled_rope:
        version = "3.2" if p.dim <= LLAMA32_MAX_DIM else "3.1"
        why = f"use_scaled_rope with dim {p.dim}"
    elif p.rope_theta == 500000 or (p.vocab_size or 0) >= 128000:
        version, why = "3", f"rope_theta {p.rope_theta:g}, vocab_size {p.vocab_size}"
    elif tokenizer_kind == "tiktoken" and p.vocab_size is None:
        version, why = "3", "a tiktoken tokenizer.model"
    elif p.gqa or p.rope_theta > 10000:
        version, why = "2", "n_kv_heads" if p.gqa else f"rope_theta {p.rope_theta:g} (Code Llama)"
    elif p.norm_eps < 5e-6 or p.dim == 8192:
        # LLaMA 1 used 1e-6, except 65B (1e-5, dim 8192); LLaMA 2's dim-8192 model has n_kv_heads
        version, why = "1", f"norm_eps {p.norm_eps:g}, dim {p.dim}, no n_kv_heads"
    else:
        version, why = "2", f"norm_eps {p.norm_eps:g}"
    llama3 = version.startswith("3")
    if tokenizer_kind is not None and llama3 != (tokenizer_kind == "tiktoken"):
        raise InputError(
            f"params.json looks like LLaMA {version} ({why}) but tokenizer.model is a "
            f"{tokenizer_kind} file, which LLaMA {'3' if not llama3 else '1/2'} uses",
            "Check that params.json and tokenizer.model come from the same download, or pass "
            "`llama_version`.",
        )
    return version, why


def expected_shards(model_size: str) -> int | None:
    """How many consolidated.*.pth Meta ships for a size ('13B', 'llama-2-70b-chat', ...)."""
    if re.search(r"mp16", model_size, re.IGNORECASE):
        return NUM_SHARDS["405B-MP16"]
    m = re.search(r"(?<![\d.])(\d+)bf?(?![a-z])", model_size, re.IGNORECASE)
    return NUM_SHARDS.get(f"{m.group(1)}B") if m else None


def special_token_ids(
    version: str, vocab_size: int, instruct: bool = False
) -> tuple[int, int | list[int]]:
    """(bos, eos) ids for config.json; LLaMA 3's follow the tiktoken ranks (128000, 128001)."""
    if not version.startswith("3"):
        return 1, 2
    base = vocab_size - LLAMA3_SPECIAL_TOKENS
    # instruct models stop at <|end_of_text|>, <|eom_id|> or <|eot_id|>
    return base, [base + 1, base + 8, base + 9] if instruct else base + 1


def hf_config(
    p: LlamaParams, version: str, vocab_size: int, instruct: bool = False
) -> dict[str, Any]:
    """The LlamaConfig arguments the transformers converter passes for these params."""
    if version not in VERSIONS:
        raise InputError(
            f"unknown LLaMA version {version!r}", f"Use one of: {', '.join(VERSIONS)}."
        )
    llama3 = version.startswith("3")
    bos, eos = special_token_ids(version, vocab_size, instruct)
    rope_scaling = None
    if version in ROPE_SCALING_FACTOR:
        rope_scaling = {
            "factor": ROPE_SCALING_FACTOR[version],
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": p.dim,
        "intermediate_size": p.intermediate_size,
        "num_attention_heads": p.n_heads,
        "num_hidden_layers": p.n_layers,
        "rms_norm_eps": p.norm_eps,
        "num_key_value_heads": p.n_kv_heads,
        "vocab_size": vocab_size,
        "rope_theta": p.rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": (
            LONG_CONTEXT if p.rope_theta > 10000 and not llama3 else CONTEXT_LENGTH[version]
        ),
        "bos_token_id": bos,
        "eos_token_id": eos,
        "tie_word_embeddings": version == "3.2",
    }


def generation_config(config: dict[str, Any]) -> dict[str, Any]:
    """The generation_config.json the converter writes next to config.json."""
    return {
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.9,
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
    }


def config_json(config: dict[str, Any], dtype_name: str) -> dict[str, Any]:
    """config.json for `hf_config`'s arguments: LlamaConfig's fields in the layout every
    transformers since 4.43 reads (rope_theta + rope_scaling; newer versions turn them into
    rope_parameters on load). Written without transformers: importing it for LlamaConfig took
    2-8 s, longer than converting a small model's weights, and its output names its version."""
    return dict(
        sorted(
            {
                "attention_bias": False,
                "attention_dropout": 0.0,
                "hidden_act": "silu",
                "initializer_range": 0.02,
                "mlp_bias": False,
                "model_type": "llama",
                "pretraining_tp": 1,
                "use_cache": True,
                "head_dim": config["hidden_size"] // config["num_attention_heads"],
                **config,
                # the converter writes float16 here whatever it saved; this is the weights' dtype
                "torch_dtype": dtype_name,
            }.items()
        )
    )


def write_config_files(folder: Path, config: dict[str, Any], dtype_name: str) -> None:
    """config.json and generation_config.json, the same bytes on every install."""
    for name, doc in (
        ("config.json", config_json(config, dtype_name)),
        ("generation_config.json", generation_config(config)),
    ):
        (folder / name).write_text(json.dumps(doc, indent=2) + "\n")
