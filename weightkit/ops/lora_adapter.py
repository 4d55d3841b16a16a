"""Reading a peft LoRA adapter: its config, what each tensor name means, each module's scaling.

Pure functions over the config dict and the tensor names, so every rule can be tested without
any weights. The rules are peft's (0.21): LoraConfig fields in peft/tuners/lora/config.py,
scaling in LoraLayer.update_layer, rank/alpha patterns in peft.utils.other.get_pattern_key, and
the key layout in peft/utils/save_and_load.py.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from weightkit.errors import InputError
from weightkit.io.sniff import JSON_FILE, what_it_is

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")  # peft's preference order
PEFT_PREFIX = "base_model.model."

# LoraConfig fields the merge reads.
USED_FIELDS = frozenset(
    {
        "peft_type",
        "r",
        "lora_alpha",
        "use_rslora",
        "rank_pattern",
        "alpha_pattern",
        "fan_in_fan_out",
        "target_modules",
        "modules_to_save",
        "use_dora",
        "lora_bias",
        "bias",
        "init_lora_weights",
    }
)
# LoraConfig fields that steer training, loading or which modules get an adapter; the tensor
# names already say which modules have one, so none of these changes the merged weights.
INERT_FIELDS = frozenset(
    {
        "task_type",
        "auto_mapping",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "exclude_modules",
        "lora_dropout",
        "layers_to_transform",
        "layers_pattern",
        "megatron_config",
        "megatron_core",
        "loftq_config",
        "eva_config",
        "corda_config",
        "lora_ga_config",
        "qalora_group_size",
        "runtime_config",
        "ensure_weight_tying",
    }
)
# LoraConfig fields that, when set, ask for a LoRA variant or feature this merge does not do.
UNSUPPORTED_FIELDS = {
    "velora_config": "VeLoRA",
    "alora_invocation_tokens": "activated LoRA (aLoRA), which is never merged",
    "monteclora_config": "MonteCLoRA",
    "use_bdlora": "block-diagonal LoRA (BD-LoRA)",
    "arrow_config": "Arrow routing",
    "kasa_config": "KaSA",
    "use_qalora": "QALoRA",
    "trainable_token_indices": "trainable tokens",
    "target_parameters": "LoRA on nn.Parameter (target_parameters)",
    "layer_replication": "layer replication",
}
# init_lora_weights values that are LoRA variants (peft: field metadata "lora_variants").
UNSUPPORTED_INITS = {"mica": "MiCA"}
# init_lora_weights values that move the base weights at init: such an adapter belongs to the
# residual base saved with it, unless converted (path_initial_model_for_weight_conversion).
RESIDUAL_INITS = ("pissa", "corda", "olora", "lora_ga")

# peft's defaults (LoraConfig) for the fields the merge reads.
DEFAULTS: dict[str, object] = {
    "r": 8,
    "lora_alpha": 8,
    "use_rslora": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "fan_in_fan_out": False,
    "target_modules": None,
    "modules_to_save": None,
    "use_dora": False,
    "lora_bias": False,
    "bias": "none",
    "init_lora_weights": True,
}

# The submodules a LoRA layer saves, and what may follow them once the adapter name is removed:
# nn.Linear children end in .weight/.bias, nn.Parameter entries in nothing; DoRA's magnitude is
# saved without `.weight` and loaded either way.
LORA_PARTS: dict[str, tuple[str, ...]] = {
    "lora_A": ("weight",),
    "lora_B": ("weight", "bias"),
    "lora_embedding_A": ("",),
    "lora_embedding_B": ("",),
    "lora_magnitude_vector": ("", "weight"),
}
# role of an adapter tensor, from (part, tail)
ROLES = {
    ("lora_A", "weight"): "A",
    ("lora_B", "weight"): "B",
    ("lora_B", "bias"): "B.bias",
    ("lora_embedding_A", ""): "A",
    ("lora_embedding_B", ""): "B",
    ("lora_magnitude_vector", ""): "magnitude",
    ("lora_magnitude_vector", "weight"): "magnitude",
}
# Wrappers peft puts around a base module; a saved copy of the whole module carries them.
_WRAPPER_RE = re.compile(r"\.(?:modules_to_save\.[^.]+|base_layer)(?=\.)")


@dataclass(frozen=True)
class AdapterConfig:
    """The adapter_config.json fields the merge depends on, with peft's defaults."""

    r: int = 8
    lora_alpha: float = 8
    use_rslora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    fan_in_fan_out: bool = False
    target_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    use_dora: bool = False
    lora_bias: bool = False
    bias: str = "none"
    init_lora_weights: bool | str = True
    unknown: tuple[str, ...] = ()  # fields peft would not know either; ignored with a warning

    def warnings(self, source: str) -> list[str]:
        out = []
        if self.unknown:
            out.append(
                f"Warning: {source}: ignored unknown field(s) "
                f"{', '.join(repr(f) for f in self.unknown)} (peft ignores them too)."
            )
        init = str(self.init_lora_weights).lower()
        if init.startswith(RESIDUAL_INITS):
            out.append(
                f"Warning: {source}: init_lora_weights={self.init_lora_weights!r} trains "
                "against a residual base model; merge into that residual model, or convert "
                "the adapter first (peft: path_initial_model_for_weight_conversion)."
            )
        return out


def parse_config(doc: object, source: str = CONFIG_NAME) -> AdapterConfig:
    """Check an adapter_config.json document the way peft's LoraConfig would, and keep what the
    merge needs. Raises InputError for other PEFT methods and unsupported LoRA variants."""
    if not isinstance(doc, dict):
        raise InputError(f"{source}: expected a JSON object, found {type(doc).__name__}")
    peft_type = doc.get("peft_type")
    if peft_type is None:
        raise InputError(
            f"{source}: no peft_type field; this is not a peft adapter config",
            "Point `lora` at the folder peft's save_pretrained() wrote.",
        )
    if str(peft_type).upper() != "LORA":
        raise InputError(
            f"{source}: peft_type is {peft_type!r}; merge-lora merges LoRA adapters only",
            f"Merge a {peft_type} adapter with peft itself "
            "(PeftModel.from_pretrained(...).merge_and_unload()).",
        )
    for name, what in UNSUPPORTED_FIELDS.items():
        if doc.get(name):
            raise InputError(
                f"{source}: {name}={doc[name]!r} asks for {what}, which "
                "merge-lora does not support",
                "Merge this adapter with peft itself.",
            )
    init = doc.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() in UNSUPPORTED_INITS:
        raise InputError(
            f"{source}: init_lora_weights={init!r} is the "
            f"{UNSUPPORTED_INITS[init.lower()]} variant, which merge-lora does not "
            "support",
            "Merge this adapter with peft itself.",
        )
    known = USED_FIELDS | INERT_FIELDS | UNSUPPORTED_FIELDS.keys()
    values = {k: doc.get(k, v) for k, v in DEFAULTS.items()}
    config = AdapterConfig(
        r=_positive_int(values["r"], "r", source),
        lora_alpha=_number(values["lora_alpha"], "lora_alpha", source),
        use_rslora=bool(values["use_rslora"]),
        rank_pattern={
            k: _positive_int(v, f"rank_pattern[{k!r}]", source)
            for k, v in _mapping(values["rank_pattern"], "rank_pattern", source).items()
        },
        alpha_pattern={
            k: _number(v, f"alpha_pattern[{k!r}]", source)
            for k, v in _mapping(values["alpha_pattern"], "alpha_pattern", source).items()
        },
        fan_in_fan_out=bool(values["fan_in_fan_out"]),
        target_modules=values["target_modules"],
        modules_to_save=values["modules_to_save"],
        use_dora=bool(values["use_dora"]),
        lora_bias=bool(values["lora_bias"]),
        bias=str(values["bias"]),
        init_lora_weights=init,
        unknown=tuple(sorted(k for k in doc if k not in known)),
    )
    if config.lora_bias and config.use_dora:
        raise InputError(
            f"{source}: lora_bias and use_dora are both set; peft refuses this "
            "combination, so the adapter is damaged"
        )
    return config


def read_config(folder: Path) -> AdapterConfig:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise InputError(
            f"{folder}: no {CONFIG_NAME} in this folder",
            "Point `lora` at a peft adapter folder (adapter_config.json plus "
            "adapter_model.safetensors or adapter_model.bin).",
        )
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise what_it_is(path, JSON_FILE) or InputError(f"{path}: not valid JSON ({e})") from None
    return parse_config(doc, str(path))


def weights_file(folder: Path) -> Path:
    """The adapter's weight file: adapter_model.safetensors, else the legacy adapter_model.bin."""
    for name in WEIGHT_NAMES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise InputError(
        f"{folder}: no {' or '.join(WEIGHT_NAMES)} in this folder",
        "Download the adapter's weight file next to its adapter_config.json.",
    )


# ---------------------------------------------------------------- scaling


def pattern_key(patterns: Iterable[str], module: str) -> str:
    """peft's get_pattern_key: the first pattern that matches the end of the module path at a
    dot boundary (patterns are regular expressions); the module path itself when none does."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


def rank_of(config: AdapterConfig, module: str) -> int:
    return config.rank_pattern.get(pattern_key(config.rank_pattern, module), config.r)


def alpha_of(config: AdapterConfig, module: str) -> float:
    return config.alpha_pattern.get(pattern_key(config.alpha_pattern, module), config.lora_alpha)


def scaling_of(config: AdapterConfig, module: str) -> float:
    """alpha / r, or alpha / sqrt(r) with rslora, with the module's rank and alpha patterns."""
    r, alpha = rank_of(config, module), alpha_of(config, module)
    return alpha / math.sqrt(r) if config.use_rslora else alpha / r


# ---------------------------------------------------------------- tensor names


@dataclass(frozen=True)
class AdapterKey:
    """One adapter tensor name, taken apart.

    role "A", "B", "B.bias" or "magnitude": a LoRA tensor of the layer at `module`
    (`embedding` tells lora_embedding_A/B from lora_A/B); role "full": a whole base tensor the
    adapter carries (modules_to_save, bias="all", saved embedding layers), `module` being that
    base tensor's name.
    """

    key: str
    module: str
    role: str
    embedding: bool = False
    adapter_name: str | None = None


def parse_key(key: str) -> AdapterKey:
    path = key.removeprefix(PEFT_PREFIX)
    parts = path.split(".")
    hit = next((i for i, p in enumerate(parts) if p in LORA_PARTS), None)
    if hit is None:
        return AdapterKey(key, _WRAPPER_RE.sub("", path), "full")
    part, tail = parts[hit], parts[hit + 1 :]
    module = ".".join(parts[:hit])
    name = None
    if len(tail) == 2 or (len(tail) == 1 and tail[0] not in LORA_PARTS[part]):
        name, tail = tail[0], tail[1:]  # `<part>.<adapter name>[.weight]`
    role = ROLES.get((part, tail[0] if tail else ""))
    if not module or role is None or len(tail) > 1:
        raise InputError(
            f"adapter tensor {key!r}: not a LoRA tensor name peft writes",
            "Expected names like base_model.model.<module>.lora_A.weight; the file "
            "may come from another tool or another PEFT method.",
        )
    return AdapterKey(key, module, role, part.startswith("lora_embedding"), name)


@dataclass(frozen=True)
class LoraModule:
    """The LoRA tensors of one adapted layer (adapter tensor names), checked complete."""

    module: str
    embedding: bool
    a: str
    b: str
    bias: str | None = None
    magnitude: str | None = None

    @property
    def weight(self) -> str:
        return f"{self.module}.weight"


@dataclass
class _Found:
    """The LoRA tensors of one layer as the names are read: slot ("a", "b", "bias",
    "magnitude") -> adapter tensor name."""

    module: str
    embedding: bool
    slots: dict[str, str] = field(default_factory=dict)


@dataclass
class AdapterLayout:
    modules: dict[str, LoraModule]  # by module path, in adapter file order
    full: dict[str, str]  # base tensor name -> adapter tensor that replaces it
    adapter_name: str | None


def group_keys(keys: Iterable[str], config: AdapterConfig, source: str) -> AdapterLayout:
    """Sort the adapter's tensor names into LoRA layers and whole-tensor replacements, checking
    that every layer is complete and fits the config."""
    modules: dict[str, _Found] = {}
    full: dict[str, str] = {}
    names: set[str] = set()
    for key in keys:
        k = parse_key(key)
        if k.adapter_name is not None:
            names.add(k.adapter_name)
        if k.role == "full":
            if k.module in full:
                raise InputError(
                    f"{source}: {full[k.module]!r} and {key!r} both replace base "
                    f"tensor {k.module!r}",
                    "The adapter file is inconsistent.",
                )
            full[k.module] = key
            continue
        m = modules.setdefault(k.module, _Found(k.module, k.embedding))
        if m.embedding != k.embedding:
            raise InputError(
                f"{source}: module {k.module!r} has both lora_A/B and lora_embedding_A/B tensors",
                "The adapter file is inconsistent.",
            )
        slot = {"A": "a", "B": "b", "B.bias": "bias", "magnitude": "magnitude"}[k.role]
        if slot in m.slots:
            raise InputError(
                f"{source}: {m.slots[slot]!r} and {key!r} are the same LoRA tensor",
                "The adapter file holds two adapters; keep one.",
            )
        m.slots[slot] = key
    if len(names) > 1:
        raise InputError(
            f"{source}: tensors of {len(names)} adapters ({', '.join(sorted(names))}) in one file",
            "Save each adapter on its own and merge them one by one.",
        )
    checked = {path: _check_module(m, config, source) for path, m in modules.items()}
    return AdapterLayout(checked, full, next(iter(names), None))


def _check_module(found: _Found, config: AdapterConfig, source: str) -> LoraModule:
    a, b = found.slots.get("a"), found.slots.get("b")
    if a is None or b is None:
        have = next(found.slots[s] for s in ("a", "b", "bias", "magnitude") if s in found.slots)
        missing = ("lora_embedding_" if found.embedding else "lora_") + ("A" if a is None else "B")
        raise InputError(
            f"{source}: {have!r} has no matching {missing} tensor for module {found.module!r}",
            "The adapter file is incomplete; download it again.",
        )
    m = LoraModule(
        found.module, found.embedding, a, b, found.slots.get("bias"), found.slots.get("magnitude")
    )
    if m.magnitude is not None and not config.use_dora:
        raise InputError(
            f"{source}: {m.magnitude!r} is a DoRA magnitude, but the config says use_dora=false",
            "Fix use_dora in adapter_config.json to match the weights.",
        )
    if m.magnitude is None and config.use_dora:
        raise InputError(
            f"{source}: use_dora=true but module {m.module!r} has no lora_magnitude_vector tensor",
            "The adapter file is incomplete or the config is wrong; download both again.",
        )
    if m.bias is not None and not config.lora_bias:
        raise InputError(
            f"{source}: {m.bias!r} is a LoRA bias, but the config says lora_bias=false",
            "Fix lora_bias in adapter_config.json to match the weights.",
        )
    if m.bias is None and config.lora_bias and not m.embedding:
        raise InputError(
            f"{source}: lora_bias=true but module {m.module!r} has no lora_B.bias",
            "The adapter file is incomplete or the config is wrong.",
        )
    return m


# ---------------------------------------------------------------- config value checks


def _positive_int(value: object, name: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{source}: {name} must be a positive integer, found {value!r}")
    return value


def _number(value: object, name: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{source}: {name} must be a number, found {value!r}")
    return value


def _mapping(value: object, name: str, source: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{source}: {name} must be an object (pattern -> value), found {value!r}")
    return value
