"""The adapter rules on their own: config fields, pattern matching, scaling, tensor names."""

from __future__ import annotations

import dataclasses
import math

import pytest

from weightkit.errors import InputError
from weightkit.ops.lora_adapter import (
    INERT_FIELDS,
    UNSUPPORTED_FIELDS,
    USED_FIELDS,
    AdapterConfig,
    alpha_of,
    group_keys,
    parse_config,
    parse_key,
    pattern_key,
    rank_of,
    read_config,
    scaling_of,
)

MODULES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.1.self_attn.q_proj",
    "model.layers.10.self_attn.o_proj",
    "model.layers.1.self_attn.o_proj",
    "model.layers.0.mlp.down_proj",
    "transformer.h.0.attn.c_proj",
    "transformer.h.0.mlp.c_proj",
    "lm_head",
    "model.embed_tokens",
]
PATTERNS = [
    ["q_proj"],
    ["proj"],  # matches only a whole name component: not q_proj
    [r"layers\.1\..*o_proj"],
    ["layers.1.self_attn.o_proj"],  # "." is a regex wildcard, as in peft
    ["^model.layers.0.mlp.down_proj"],
    ["mlp.c_proj", "c_proj"],  # the first match wins
    ["c_proj", "mlp.c_proj"],
    ["model.embed_tokens", "lm_head"],
    ["nothing"],
    [],
]


@pytest.mark.parametrize("patterns", PATTERNS)
def test_pattern_key_is_peft_get_pattern_key(patterns):
    from peft.utils.other import get_pattern_key

    for module in MODULES:
        assert pattern_key(patterns, module) == get_pattern_key(patterns, module), module


def test_rank_alpha_and_scaling():
    config = AdapterConfig(
        r=4, lora_alpha=8, rank_pattern={"q_proj": 16}, alpha_pattern={r"layers\.1\..*o_proj": 2}
    )
    assert rank_of(config, "model.layers.0.self_attn.q_proj") == 16
    assert alpha_of(config, "model.layers.0.self_attn.q_proj") == 8
    assert scaling_of(config, "model.layers.0.self_attn.q_proj") == 8 / 16
    assert scaling_of(config, "model.layers.1.self_attn.o_proj") == 2 / 4
    assert scaling_of(config, "model.layers.10.self_attn.o_proj") == 8 / 4
    rs = dataclasses.replace(config, use_rslora=True)
    assert scaling_of(rs, "model.layers.0.self_attn.q_proj") == 8 / math.sqrt(16)
    assert scaling_of(rs, "model.layers.0.mlp.down_proj") == 8 / math.sqrt(4)


def test_scaling_matches_peft_layers():
    """The scaling peft's own LoRA layers get, for every module of a tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    fields = dict(
        r=4,
        lora_alpha=8,
        use_rslora=True,
        rank_pattern={"q_proj": 8},
        alpha_pattern={r"layers\.1\..*": 3},
        target_modules=["q_proj", "v_proj"],
    )
    layers = torch.nn.ModuleDict(
        {
            str(i): torch.nn.ModuleDict(
                {"q_proj": torch.nn.Linear(8, 8), "v_proj": torch.nn.Linear(8, 8)}
            )
            for i in range(2)
        }
    )
    model = get_peft_model(torch.nn.ModuleDict({"layers": layers}), LoraConfig(**fields))
    config = parse_config({"peft_type": "LORA", **fields})
    seen = 0
    for name, module in model.base_model.model.named_modules():
        if isinstance(module, LoraLayer):
            assert scaling_of(config, name) == module.scaling["default"], name
            seen += 1
    assert seen == 4


def test_config_fields_cover_peft_lora_config():
    from peft import LoraConfig

    peft_fields = {f.name for f in dataclasses.fields(LoraConfig)}
    assert peft_fields == USED_FIELDS | INERT_FIELDS | set(UNSUPPORTED_FIELDS)


def test_parse_config_defaults_and_unknown_fields():
    config = parse_config(
        {"peft_type": "LORA", "enable_lora": None, "merge_weights": False, "lora_dropout": 0.05}
    )
    assert (config.r, config.lora_alpha, config.use_rslora, config.fan_in_fan_out) == (
        8,
        8,
        False,
        False,
    )
    assert config.unknown == ("enable_lora", "merge_weights")
    assert "'enable_lora', 'merge_weights'" in config.warnings("x/adapter_config.json")[0]
    pissa = parse_config({"peft_type": "LORA", "init_lora_weights": "pissa_niter_4"})
    assert "residual" in pissa.warnings("x")[0]


@pytest.mark.parametrize(
    "doc, words",
    [
        ({"peft_type": "LOHA", "r": 8}, ["peft_type is 'LOHA'", "LoRA adapters only"]),
        ({"peft_type": "ADALORA"}, ["'ADALORA'"]),
        ({"r": 8}, ["no peft_type"]),
        ({"peft_type": "LORA", "use_bdlora": {"x": 1}}, ["use_bdlora", "BD-LoRA"]),
        ({"peft_type": "LORA", "alora_invocation_tokens": [1, 2]}, ["aLoRA"]),
        ({"peft_type": "LORA", "target_parameters": ["experts.w1"]}, ["target_parameters"]),
        ({"peft_type": "LORA", "init_lora_weights": "mica"}, ["MiCA"]),
        ({"peft_type": "LORA", "r": 0}, ["r must be a positive integer"]),
        ({"peft_type": "LORA", "rank_pattern": {"q": "8"}}, ["rank_pattern['q']"]),
        ({"peft_type": "LORA", "alpha_pattern": ["q"]}, ["alpha_pattern must be an object"]),
        ([1, 2], ["expected a JSON object"]),
    ],
)
def test_parse_config_refuses(doc, words):
    with pytest.raises(InputError) as e:
        parse_config(doc, "a/adapter_config.json")
    for word in words:
        assert word in str(e.value)


P = "base_model.model."


@pytest.mark.parametrize(
    "key, module, role, embedding, name",
    [
        (
            P + "model.layers.0.self_attn.q_proj.lora_A.weight",
            "model.layers.0.self_attn.q_proj",
            "A",
            False,
            None,
        ),
        (
            P + "model.layers.0.self_attn.q_proj.lora_B.default.weight",
            "model.layers.0.self_attn.q_proj",
            "B",
            False,
            "default",
        ),
        (
            P + "transformer.h.0.attn.c_attn.lora_B.bias",
            "transformer.h.0.attn.c_attn",
            "B.bias",
            False,
            None,
        ),
        (P + "model.embed_tokens.lora_embedding_A", "model.embed_tokens", "A", True, None),
        (
            P + "model.embed_tokens.lora_embedding_B.default",
            "model.embed_tokens",
            "B",
            True,
            "default",
        ),
        (
            P + "model.layers.0.self_attn.v_proj.lora_magnitude_vector",
            "model.layers.0.self_attn.v_proj",
            "magnitude",
            False,
            None,
        ),
        (
            P + "model.layers.0.self_attn.v_proj.lora_magnitude_vector.weight",
            "model.layers.0.self_attn.v_proj",
            "magnitude",
            False,
            None,
        ),
        (
            P + "model.layers.0.self_attn.v_proj.lora_magnitude_vector.default.weight",
            "model.layers.0.self_attn.v_proj",
            "magnitude",
            False,
            "default",
        ),
        (
            "model.layers.0.self_attn.q_proj.lora_A.weight",  # no peft prefix
            "model.layers.0.self_attn.q_proj",
            "A",
            False,
            None,
        ),
        (P + "lm_head.weight", "lm_head.weight", "full", False, None),
        (
            P + "model.embed_tokens.base_layer.weight",
            "model.embed_tokens.weight",
            "full",
            False,
            None,
        ),
        (P + "lm_head.modules_to_save.default.weight", "lm_head.weight", "full", False, None),
    ],
)
def test_parse_key(key, module, role, embedding, name):
    k = parse_key(key)
    assert (k.module, k.role, k.embedding, k.adapter_name) == (module, role, embedding, name)


@pytest.mark.parametrize(
    "key",
    [
        P + "model.q_proj.lora_A",
        P + "model.q_proj.lora_A.default",
        P + "model.q_proj.lora_A.default.weight.extra",
        P + "model.q_proj.lora_embedding_A.default.weight",
        P + "lora_A.weight",
    ],
)
def test_parse_key_refuses(key):
    with pytest.raises(InputError, match="not a LoRA tensor name"):
        parse_key(key)


def _keys(*modules: str, parts=("lora_A.weight", "lora_B.weight")) -> list[str]:
    return [f"{P}{m}.{p}" for m in modules for p in parts]


def test_group_keys():
    keys = [
        *_keys("model.q_proj", "model.v_proj"),
        P + "lm_head.weight",
        P + "model.embed_tokens.lora_embedding_A",
        P + "model.embed_tokens.lora_embedding_B",
    ]
    layout = group_keys(keys, AdapterConfig(), "f")
    assert list(layout.modules) == ["model.q_proj", "model.v_proj", "model.embed_tokens"]
    assert layout.modules["model.embed_tokens"].embedding
    assert layout.modules["model.q_proj"].weight == "model.q_proj.weight"
    assert layout.full == {"lm_head.weight": P + "lm_head.weight"}
    assert layout.adapter_name is None


@pytest.mark.parametrize(
    "keys, config, words",
    [
        ([P + "model.q_proj.lora_A.weight"], AdapterConfig(), ["no matching lora_B"]),
        ([P + "model.q_proj.lora_B.weight"], AdapterConfig(), ["no matching lora_A"]),
        (
            [
                *_keys("model.q_proj", parts=("lora_A.a.weight", "lora_B.a.weight")),
                *_keys("model.v_proj", parts=("lora_A.b.weight", "lora_B.b.weight")),
            ],
            AdapterConfig(),
            ["2 adapters (a, b)"],
        ),
        (
            [*_keys("model.q_proj"), P + "model.q_proj.lora_A.default.weight"],
            AdapterConfig(),
            ["same LoRA tensor"],
        ),
        (_keys("model.q_proj"), AdapterConfig(use_dora=True), ["no lora_magnitude_vector"]),
        (
            [*_keys("model.q_proj"), P + "model.q_proj.lora_magnitude_vector"],
            AdapterConfig(),
            ["use_dora=false"],
        ),
        (
            [*_keys("model.q_proj"), P + "model.q_proj.lora_B.bias"],
            AdapterConfig(),
            ["lora_bias=false"],
        ),
        (_keys("model.q_proj"), AdapterConfig(lora_bias=True), ["no lora_B.bias"]),
        (
            [P + "lm_head.weight", P + "lm_head.base_layer.weight"],
            AdapterConfig(),
            ["both replace base tensor 'lm_head.weight'"],
        ),
    ],
)
def test_group_keys_refuses(keys, config, words):
    with pytest.raises(InputError) as e:
        group_keys(keys, config, "adapter_model.safetensors")
    for word in words:
        assert word in str(e.value)


def test_an_incomplete_layer_is_named_by_its_a_b_bias_or_magnitude_tensor():
    # the magnitude comes first in the file; the message names the B tensor all the same
    keys = [P + "model.q_proj.lora_magnitude_vector", P + "model.q_proj.lora_B.weight"]
    with pytest.raises(InputError) as e:
        group_keys(keys, AdapterConfig(use_dora=True), "f")
    assert str(e.value) == (
        "f: 'base_model.model.model.q_proj.lora_B.weight' has no matching lora_A tensor for "
        "module 'model.q_proj'\nThe adapter file is incomplete; download it again."
    )
    with pytest.raises(InputError) as e:
        group_keys([P + "model.embed_tokens.lora_embedding_A"], AdapterConfig(), "f")
    assert e.value.message == (
        "f: 'base_model.model.model.embed_tokens.lora_embedding_A' has "
        "no matching lora_embedding_B tensor for module "
        "'model.embed_tokens'"
    )


def test_a_group_of_keys_gives_complete_layers():
    keys = [
        P + "model.q_proj.lora_B.weight",
        P + "model.q_proj.lora_A.weight",
        P + "model.q_proj.lora_B.bias",
    ]
    m = group_keys(keys, AdapterConfig(lora_bias=True), "f").modules["model.q_proj"]
    assert (m.a, m.b, m.bias, m.magnitude, m.embedding) == (keys[1], keys[0], keys[2], None, False)


def test_where_the_adapter_is_wrong_the_hint_names_the_parameter(tmp_path):
    with pytest.raises(InputError) as e:
        read_config(tmp_path)
    assert (e.value.message, e.value.hint) == (
        f"{tmp_path}: no adapter_config.json in this folder",
        "Point `lora` at a peft adapter folder (adapter_config.json plus "
        "adapter_model.safetensors or adapter_model.bin).",
    )
    with pytest.raises(InputError) as e:
        parse_config({"r": 8}, "adapter_config.json")
    assert (e.value.message, e.value.hint) == (
        "adapter_config.json: no peft_type field; this is not a peft adapter config",
        "Point `lora` at the folder peft's save_pretrained() wrote.",
    )
