"""params.json of Meta's real releases -> LLaMA version and the converter's config arguments."""

from __future__ import annotations

import json

import pytest

from weightkit.errors import InputError
from weightkit.ops.llama_params import (
    detect_version,
    expected_shards,
    generation_config,
    hf_config,
    parse_params,
    read_params,
)

# params.json as Meta ships them (vocab_size -1: LLaMA 1/2 take it from the tokenizer)
LLAMA1_7B = {
    "dim": 4096,
    "multiple_of": 256,
    "n_heads": 32,
    "n_layers": 32,
    "norm_eps": 1e-06,
    "vocab_size": -1,
}
LLAMA1_30B = {
    "dim": 6656,
    "multiple_of": 256,
    "n_heads": 52,
    "n_layers": 60,
    "norm_eps": 1e-06,
    "vocab_size": -1,
}
LLAMA1_65B = {
    "dim": 8192,
    "multiple_of": 256,
    "n_heads": 64,
    "n_layers": 80,
    "norm_eps": 1e-05,
    "vocab_size": -1,
}
LLAMA2_7B = {
    "dim": 4096,
    "multiple_of": 256,
    "n_heads": 32,
    "n_layers": 32,
    "norm_eps": 1e-05,
    "vocab_size": -1,
}
LLAMA2_13B = {
    "dim": 5120,
    "multiple_of": 256,
    "n_heads": 40,
    "n_layers": 40,
    "norm_eps": 1e-05,
    "vocab_size": -1,
}
LLAMA2_70B = {
    "dim": 8192,
    "multiple_of": 4096,
    "ffn_dim_multiplier": 1.3,
    "n_heads": 64,
    "n_kv_heads": 8,
    "n_layers": 80,
    "norm_eps": 1e-05,
    "vocab_size": -1,
}
CODELLAMA_7B = {
    "dim": 4096,
    "n_layers": 32,
    "n_heads": 32,
    "multiple_of": 256,
    "ffn_dim_multiplier": 1.0,
    "norm_eps": 1e-5,
    "rope_theta": 1000000,
    "vocab_size": 32016,
}
LLAMA3_8B = {
    "dim": 4096,
    "n_layers": 32,
    "n_heads": 32,
    "n_kv_heads": 8,
    "vocab_size": 128256,
    "multiple_of": 1024,
    "ffn_dim_multiplier": 1.3,
    "norm_eps": 1e-05,
    "rope_theta": 500000.0,
}
LLAMA3_70B = {
    "dim": 8192,
    "ffn_dim_multiplier": 1.3,
    "multiple_of": 4096,
    "n_heads": 64,
    "n_kv_heads": 8,
    "n_layers": 80,
    "norm_eps": 1e-05,
    "vocab_size": 128256,
    "rope_theta": 500000.0,
}
LLAMA31_8B = {
    "dim": 4096,
    "ffn_dim_multiplier": 1.3,
    "multiple_of": 1024,
    "n_heads": 32,
    "n_kv_heads": 8,
    "n_layers": 32,
    "norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "use_scaled_rope": True,
    "vocab_size": 128256,
}
LLAMA31_405B = {
    "dim": 16384,
    "n_layers": 126,
    "n_heads": 128,
    "n_kv_heads": 8,
    "vocab_size": 128256,
    "ffn_dim_multiplier": 1.2,
    "multiple_of": 4096,
    "norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "use_scaled_rope": True,
}
LLAMA32_1B = {
    "dim": 2048,
    "n_layers": 16,
    "n_heads": 32,
    "n_kv_heads": 8,
    "vocab_size": 128256,
    "ffn_dim_multiplier": 1.5,
    "multiple_of": 256,
    "norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "use_scaled_rope": True,
}
LLAMA32_3B = {
    "dim": 3072,
    "n_layers": 28,
    "n_heads": 24,
    "n_kv_heads": 8,
    "vocab_size": 128256,
    "ffn_dim_multiplier": 1.0,
    "multiple_of": 256,
    "norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "use_scaled_rope": True,
}

NO_SCALING = None
SCALING_8 = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}
SCALING_32 = {**SCALING_8, "factor": 32.0}


@pytest.mark.parametrize(
    ("params", "tokenizer", "version", "vocab", "expected"),
    [
        # hidden, intermediate, heads, kv heads, layers, eps, theta, scaling, max pos,
        # bos, eos, tied
        (
            LLAMA1_7B,
            "sentencepiece",
            "1",
            32000,
            (4096, 11008, 32, 32, 32, 1e-06, 10000.0, NO_SCALING, 2048, 1, 2, False),
        ),
        (
            LLAMA1_30B,
            "sentencepiece",
            "1",
            32000,
            (6656, 17920, 52, 52, 60, 1e-06, 10000.0, NO_SCALING, 2048, 1, 2, False),
        ),
        (
            LLAMA1_65B,
            "sentencepiece",
            "1",
            32000,
            (8192, 22016, 64, 64, 80, 1e-05, 10000.0, NO_SCALING, 2048, 1, 2, False),
        ),
        (
            LLAMA2_7B,
            "sentencepiece",
            "2",
            32000,
            (4096, 11008, 32, 32, 32, 1e-05, 10000.0, NO_SCALING, 4096, 1, 2, False),
        ),
        (
            LLAMA2_13B,
            None,
            "2",
            32000,
            (5120, 13824, 40, 40, 40, 1e-05, 10000.0, NO_SCALING, 4096, 1, 2, False),
        ),
        (
            LLAMA2_70B,
            "sentencepiece",
            "2",
            32000,
            (8192, 28672, 64, 8, 80, 1e-05, 10000.0, NO_SCALING, 4096, 1, 2, False),
        ),
        (
            CODELLAMA_7B,
            "sentencepiece",
            "2",
            32016,
            (4096, 11008, 32, 32, 32, 1e-05, 1000000.0, NO_SCALING, 16384, 1, 2, False),
        ),
        (
            LLAMA3_8B,
            "tiktoken",
            "3",
            128256,
            (4096, 14336, 32, 8, 32, 1e-05, 500000.0, NO_SCALING, 8192, 128000, 128001, False),
        ),
        (
            LLAMA3_70B,
            None,
            "3",
            128256,
            (8192, 28672, 64, 8, 80, 1e-05, 500000.0, NO_SCALING, 8192, 128000, 128001, False),
        ),
        (
            LLAMA31_8B,
            "tiktoken",
            "3.1",
            128256,
            (4096, 14336, 32, 8, 32, 1e-05, 500000.0, SCALING_8, 131072, 128000, 128001, False),
        ),
        (
            LLAMA31_405B,
            "tiktoken",
            "3.1",
            128256,
            (16384, 53248, 128, 8, 126, 1e-05, 500000.0, SCALING_8, 131072, 128000, 128001, False),
        ),
        (
            LLAMA32_1B,
            "tiktoken",
            "3.2",
            128256,
            (2048, 8192, 32, 8, 16, 1e-05, 500000.0, SCALING_32, 131072, 128000, 128001, True),
        ),
        (
            LLAMA32_3B,
            "tiktoken",
            "3.2",
            128256,
            (3072, 8192, 24, 8, 28, 1e-05, 500000.0, SCALING_32, 131072, 128000, 128001, True),
        ),
    ],
)
def test_real_releases(params, tokenizer, version, vocab, expected):
    p = parse_params(params)
    assert detect_version(p, tokenizer)[0] == version
    config = hf_config(p, version, vocab)
    (hidden, inter, heads, kv, layers, eps, theta, scaling, max_pos, bos, eos, tied) = expected
    assert config == {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "rms_norm_eps": eps,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "rope_theta": theta,
        "rope_scaling": scaling,
        "max_position_embeddings": max_pos,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "tie_word_embeddings": tied,
    }


def test_instruct_stops_at_three_tokens():
    config = hf_config(parse_params(LLAMA31_8B), "3.1", 128256, instruct=True)
    assert config["eos_token_id"] == [128001, 128008, 128009]
    assert generation_config(config) == {
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.9,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
    }
    assert hf_config(parse_params(LLAMA2_7B), "2", 32000, instruct=True)["eos_token_id"] == 2


def test_the_version_can_be_forced():
    # a LLaMA 3.1 8B converted as "3" gets LLaMA 3's context and no rope scaling
    config = hf_config(parse_params(LLAMA31_8B), "3", 128256)
    assert (config["max_position_embeddings"], config["rope_scaling"]) == (8192, None)
    with pytest.raises(InputError, match="unknown LLaMA version '4'"):
        hf_config(parse_params(LLAMA31_8B), "4", 128256)


def test_an_explicit_rope_scaling_factor_decides_3_1_or_3_2():
    assert detect_version(parse_params({**LLAMA32_1B, "rope_scaling_factor": 8}))[0] == "3.1"
    assert detect_version(parse_params({**LLAMA31_8B, "rope_scaling_factor": 32}))[0] == "3.2"


def test_a_tokenizer_of_the_other_family_is_refused():
    with pytest.raises(InputError, match="looks like LLaMA 3 .* sentencepiece"):
        detect_version(parse_params(LLAMA3_8B), "sentencepiece")
    with pytest.raises(InputError, match="looks like LLaMA 2 .* tiktoken"):
        detect_version(parse_params(CODELLAMA_7B), "tiktoken")
    # when params.json has neither rope_theta nor vocab_size, the tokenizer file decides
    bare = {k: v for k, v in LLAMA3_8B.items() if k not in ("rope_theta", "vocab_size")}
    assert detect_version(parse_params(bare), "tiktoken")[0] == "3"


@pytest.mark.parametrize(
    ("size", "shards"),
    [
        ("7B", 1),
        ("13B", 2),
        ("13Bf", 2),
        ("30B", 4),
        ("34B", 4),
        ("65B", 8),
        ("70B", 8),
        ("llama-2-13b-chat", 2),
        ("llama-2-70b", 8),
        ("CodeLlama-34b-Instruct", 4),
        ("Meta-Llama-3.1-8B", 1),
        ("Llama3.2-3B", 1),
        ("Meta-Llama-3.1-405B", 8),
        ("Meta-Llama-3.1-405B-MP16", 16),
        ("tokenizer", None),
        ("my-model", None),
    ],
)
def test_expected_shards(size, shards):
    assert expected_shards(size) == shards


def test_bad_params(tmp_path):
    with pytest.raises(InputError, match="no 'n_heads' key"):
        parse_params({"dim": 64, "n_layers": 2, "norm_eps": 1e-5})
    with pytest.raises(InputError, match="do not split into whole, even-sized heads"):
        parse_params({**LLAMA2_70B, "n_kv_heads": 7})
    path = tmp_path / "params.json"
    with pytest.raises(InputError, match="no params.json here"):
        read_params(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="cannot read it as JSON"):
        read_params(path)
    path.write_text(json.dumps({"model": LLAMA3_8B}))  # nested, as some releases do
    assert read_params(path).vocab_size == 128256


def test_where_the_inputs_are_wrong_the_hint_names_the_parameter(tmp_path):
    with pytest.raises(InputError) as e:
        read_params(tmp_path / "params.json")
    assert (e.value.message, e.value.hint) == (
        f"{tmp_path / 'params.json'}: no params.json here",
        "Point `input_dir` at the folder Meta's download put params.json in.",
    )
    with pytest.raises(InputError) as e:
        detect_version(parse_params(LLAMA3_8B), "sentencepiece")
    assert e.value.hint == (
        "Check that params.json and tokenizer.model come from the same "
        "download, or pass `llama_version`."
    )
