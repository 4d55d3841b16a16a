"""`weightkit merge-lora`: fold a peft LoRA adapter into its base model, tensor by tensor.

Only the tensors the adapter touches need arithmetic; the rest stream through unchanged. Each job
loads one base tensor and the few adapter tensors that belong to it. The arithmetic follows
peft's merge (peft/tuners/lora/layer.py, dora.py, variants.py) op for op in fp32 and rounds once
to the output dtype, so it equals peft's merge bit for bit in fp32, and in fp16/bf16 too except
for embedding LoRA, where peft rounds the delta to the weight's dtype before adding it.

The base is any source (weightkit.sources): a stored model, a raw Meta folder read as converted,
or a recovered model; `MergedView` computes it in the same pass, and nothing between is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from weightkit.dtypes import FLOAT_DTYPES, output_dtype, parse_dtype, short_name
from weightkit.errors import InputError
from weightkit.io.buffers import empty_tensor
from weightkit.io.reader import Checkpoint, open_checkpoint
from weightkit.io.tensor_info import TensorInfo
from weightkit.kernels import BLOCK, DEFAULT_THREADS, intra_op_threads, scratch
from weightkit.manifest import Manifest
from weightkit.ops import lora_adapter
from weightkit.ops.delta import accumulate_dtype
from weightkit.ops.lora_adapter import AdapterConfig, LoraModule
from weightkit.options import HubOptions, WriteOptions
from weightkit.results import WriteResult, checked_text
from weightkit.sources.open import Reading, local_paths
from weightkit.sources.source import (
    Node,
    SideFiles,
    Source,
    View,
    checked,
    checkpoint_node,
    combine,
    retyped,
    tally,
)
from weightkit.sources.write import check_output, write_source

_EMPTY_HINT = (
    "An adapter_model.bin of a few hundred bytes is the empty file alpaca-lora's finetune.py "
    "saved with newer peft versions (its state_dict override returned nothing). Save the trained "
    "model again with model.save_pretrained(), or download a complete copy of the adapter."
)


def merge_lora(
    base: str | Path,
    lora: str | Path,
    out: str | Path,
    *,
    dtype: str = "auto",
    options: WriteOptions | None = None,
    hub: HubOptions | None = None,
) -> WriteResult:
    """Write base + LoRA adapter into `out`, computed in fp32 and rounded once; prints nothing,
    returns the result.

    `lora` is a peft adapter folder (adapter_config.json and adapter_model.safetensors or the
    legacy adapter_model.bin). dtype "auto" keeps each base tensor's dtype. `base` is any model
    source (weightkit.sources): a raw Meta folder is read as convert writes it in `dtype`,
    converted and merged in one pass. Every name and shape is checked from the headers before
    any tensor is read; a mismatch raises InputError and nothing is written. `options`: how the
    checkpoint is written; `hub`: how a Hub input is fetched.
    """
    options = options if options is not None else WriteOptions()
    forced = None if dtype == "auto" else parse_dtype(dtype)
    check_output(out, local_paths(base, lora), options)
    reading = Reading.of(options, hub)
    base_src = reading.open(base, role="base", dtype=forced)
    return write_merged(
        base_src, lora, out, forced, title="merge-lora", options=options, reading=reading
    )


def write_merged(
    base: Source,
    lora: str | Path,
    out: str | Path,
    forced: torch.dtype | None,
    *,
    title: str,
    options: WriteOptions,
    reading: Reading,
) -> WriteResult:
    """Merge adapter `lora` into `base` and write the result.

    A base whose tensors have a manifest to match (a recovered model: its diff's target
    manifest) has each tensor checked as it is computed, before the merge; those entries are
    kept with the output's journal, so a resumed run reports them too.
    """
    merged = MergedView(base, open_adapter(lora, reading), forced)
    expected = base.expected
    if expected is None:
        return write_source(merged, out, title=title, options=options, log=reading.log)
    what = "the tuned model (the recovered tensors, before the merge)"

    def counts() -> tuple[int, list[str]]:
        return tally(expected, merged.base_entries, f"the model {base.label}")

    def finish(folder: Path) -> list[str]:
        return [checked_text(*counts(), len(merged), what)]

    result = write_source(
        merged,
        out,
        title=title,
        options=options,
        log=reading.log,
        finish=finish,
        side_manifest=merged.base_entries,
    )
    if not result.dry_run:
        result.checked, result.within_rounding = counts()
        result.expected_what, result.check_in_notes = what, True
    return result


@dataclass(frozen=True)
class Adapter:
    """A peft adapter: its folder, config and weights."""

    folder: Path
    config: AdapterConfig
    weights: Checkpoint


def open_adapter(spec: str | Path, reading: Reading | None = None) -> Adapter:
    """The adapter folder `spec` names (a folder, its weight file, a Hub repo id or release)."""
    folder = (reading if reading is not None else Reading()).resolve(spec, role="lora")
    if folder.is_file():  # the weight file was given; its config sits next to it
        folder = folder.parent
    config = lora_adapter.read_config(folder)
    return Adapter(folder, config, open_checkpoint(lora_adapter.weights_file(folder)))


class MergedView(View):
    """base + LoRA adapter, a tensor at a time: the tensors the adapter changes are computed
    whole, in fp32, and rounded once; the others stream through in row pieces."""

    def __init__(self, base: Source, adapter: Adapter, forced: torch.dtype | None) -> None:
        self.base, self.adapter, self.forced = base, adapter, forced
        self.label = f"{base.label} with {adapter.folder} merged in"
        self.plan = plan_merge(base, adapter.weights, adapter.config)
        self.infos = {}
        for name in base.names():
            info = base.info(name)
            self.infos[name] = TensorInfo(
                name, output_dtype(info.dtype, forced), info.shape, info.file
            )
        self.notes = [
            *base.notes,
            *adapter.config.warnings(str(adapter.folder / lora_adapter.CONFIG_NAME)),
            *self.plan.notes,
        ]
        self.base_entries = Manifest()  # of the base's tensors, where they are checked

    def node(self, name: str) -> Node:
        out = self.infos[name]
        base = self.base.node(name)
        if self.base.expected is not None:
            base = checked(
                base, self.base.expected, self.base_entries, f"the model {self.base.label}"
            )
        steps = self.plan.steps.get(name, [])
        if not steps:
            return retyped(base, out)
        keys = [k for s in steps for k in s.tensors]

        def compute(w: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
            return apply_steps(w, tensors, steps)

        node = combine(
            out, [base, *(checkpoint_node(self.adapter.weights, k) for k in keys)], compute
        )
        # on the CPU whatever `device` says: the rank-r product and DoRA's norm must be taken
        # there (see lora_delta), and what is left (a widening add) would not pay for the copies
        node.cpu_only = True
        return node

    @property
    def inputs(self) -> list[Path]:
        return [*self.base.inputs, self.adapter.folder]

    def config(self) -> dict | None:
        return self.base.config()

    def side_files(self) -> list[SideFiles]:
        return self.base.side_files()


# ---------------------------------------------------------------- planning, from headers only


@dataclass(frozen=True)
class Step:
    """One change to a base tensor, applied in order; tensors are adapter tensor names.

    kind "replace": the adapter's copy replaces the tensor (modules_to_save, bias="all").
    kind "lora": W += transpose(B @ A, transposed) * scaling; with `dora`, the third tensor is
    the magnitude and the result is rescaled row by row.
    kind "bias": bias += B.bias * scaling (lora_bias).
    """

    kind: str
    tensors: tuple[str, ...]
    scaling: float = 1.0
    transposed: bool = False
    dora: bool = False


@dataclass
class MergePlan:
    steps: dict[str, list[Step]] = field(default_factory=dict)  # base tensor name -> its steps
    notes: list[str] = field(default_factory=list)


def plan_merge(base: Source, adapter: Checkpoint, config: AdapterConfig) -> MergePlan:
    """Map every adapter tensor onto the base tensor it changes and check that it fits."""
    source = str(adapter.path)
    if len(adapter) == 0:
        size = adapter.path.stat().st_size
        raise InputError(f"{source}: the adapter holds no tensors ({size} bytes)", _EMPTY_HINT)
    layout = lora_adapter.group_keys(adapter.names(), config, source)
    plan = MergePlan()
    tied: dict[str, str] = {}  # head -> the embedding it is tied to
    for name, key in layout.full.items():
        target = _target(base, name, tied)
        _check_full(base, adapter, target, key)
        plan.steps.setdefault(target, []).append(Step("replace", (key,)))
    flipped = []
    # a head tied to the input embedding is merged after the embedding's own LoRA, in peft's
    # module order (the embedding comes first in the model)
    for m in sorted(layout.modules.values(), key=lambda m: m.weight not in base):
        target = _target(base, m.weight, tied)
        _check_rank(adapter, config, m)
        transposed = _orientation(base, adapter, config, m, target)
        if not m.embedding and transposed != config.fan_in_fan_out:
            flipped.append(m.module)
        tensors = (m.a, m.b) + ((m.magnitude,) if m.magnitude else ())
        plan.steps.setdefault(target, []).append(
            Step(
                "lora",
                tensors,
                lora_adapter.scaling_of(config, m.module),
                transposed,
                m.magnitude is not None,
            )
        )
        if m.bias is not None:
            bias = _check_bias(base, adapter, m.module, m.bias)
            plan.steps.setdefault(bias, []).append(
                Step("bias", (m.bias,), lora_adapter.scaling_of(config, m.module))
            )
    merged = sum(1 for s in plan.steps.values() if s[-1].kind != "replace")
    plan.notes.append(
        f"Merged LoRA into {merged} tensor(s); "
        f"{len(base) - len(plan.steps)} streamed through unchanged."
    )
    if layout.full:
        plan.notes.append(
            f"{len(layout.full)} tensor(s) taken as the adapter saved them "
            "(modules_to_save, saved base layers)."
        )
    for head, embedding in tied.items():
        plan.notes.append(
            f"{head} is tied to {embedding} (only that is stored); the adapter's "
            "changes to the head went into the shared tensor, as peft merges them."
        )
    if flipped:
        plan.notes.append(
            f"fan_in_fan_out={str(config.fan_in_fan_out).lower()} in the config does not fit "
            f"{len(flipped)} layer(s) ({flipped[0]}{', …' if len(flipped) > 1 else ''}); used the "
            "orientation their shapes fit, as peft does for Conv1D and Linear layers."
        )
    return plan


# Output heads that models tie to their input embedding (tie_word_embeddings): the checkpoint
# stores only the embedding, and peft's merge into the head changes that shared tensor.
TIED_HEADS = {
    "lm_head.weight": (
        "model.embed_tokens.weight",
        "transformer.wte.weight",
        "model.decoder.embed_tokens.weight",
        "transformer.word_embeddings.weight",
    ),
}


def _target(base: Source, name: str, tied: dict[str, str]) -> str:
    """The base tensor `name` is stored as: itself, or the embedding a missing head is tied to."""
    if name in base or name not in TIED_HEADS or _unties(base):
        return name
    for embedding in TIED_HEADS[name]:
        if embedding in base:
            tied[name] = embedding
            return embedding
    return name


def _unties(base: Source) -> bool:
    """True when the base config says tie_word_embeddings=false (a missing head is then missing)."""
    return (base.config() or {}).get("tie_word_embeddings") is False


def _base_tensor(base: Source, adapter: Checkpoint, name: str, key: str) -> None:
    if name not in base:
        raise InputError(
            f"adapter tensor {key!r} ({adapter.path}) changes base tensor {name!r}, which the "
            f"base model ({base.label}) does not have",
            "Check that `base` is the model this adapter was trained on.",
        )
    dtype = base.info(name).dtype
    if dtype not in FLOAT_DTYPES:
        raise InputError(
            f"base tensor {name!r} ({base.where(name)}) is {short_name(dtype)}; a LoRA "
            "adapter can only change fp32, fp16, bf16 or fp64 weights",
            "Quantized weights (8-bit floats, integers) come with scales a merge would have to "
            "apply first: merge into an unquantized (bf16 or fp16) copy of the base model.",
        )


def _mismatch(
    base: Source, adapter: Checkpoint, name: str, key: str, want: tuple, why: str
) -> InputError:
    return InputError(
        f"adapter tensor {key!r} ({adapter.path}) does not fit base tensor {name!r}: {why} "
        f"{list(want)}, the base model has {list(base.info(name).shape)} "
        f"({base.where(name)})",
        "The adapter was trained on a different base model (or another size of it); check `base`.",
    )


def _check_full(base: Source, adapter: Checkpoint, name: str, key: str) -> None:
    _base_tensor(base, adapter, name, key)
    shape, have = adapter.info(key).shape, base.info(name).shape
    if shape == have:
        return
    if len(shape) == len(have) >= 1 and shape[1:] == have[1:] and shape[0] > have[0]:
        raise InputError(
            f"adapter tensor {key!r} ({adapter.path}) has {shape[0]} rows, base tensor "
            f"{name!r} has {have[0]} ({base.where(name)}): the adapter was trained with an "
            "extended vocabulary",
            "Resize the base model's embeddings to the adapter's vocabulary first "
            f"(model.resize_token_embeddings({shape[0]}), then save_pretrained) and merge into "
            "that.",
        )
    raise _mismatch(base, adapter, name, key, shape, "the adapter's copy has shape")


def _check_rank(adapter: Checkpoint, config: AdapterConfig, m: LoraModule) -> None:
    a, b = adapter.info(m.a).shape, adapter.info(m.b).shape
    if len(a) != 2 or len(b) != 2:
        raise InputError(
            f"{adapter.path}: {m.a!r} {list(a)} and {m.b!r} {list(b)} are not "
            "matrices; only Linear, Conv1D and Embedding LoRA layers are supported",
            "Merge LoRA on convolution layers with peft itself.",
        )
    r = lora_adapter.rank_of(config, m.module)
    if a[0] != b[1] or a[0] != r:
        raise InputError(
            f"{adapter.path}: {m.a!r} has shape {list(a)} and {m.b!r} has {list(b)}, but "
            f"the config gives module {m.module!r} rank r={r}",
            "r, rank_pattern in adapter_config.json must match the saved tensors; the config "
            "belongs to another adapter.",
        )


def _orientation(
    base: Source, adapter: Checkpoint, config: AdapterConfig, m: LoraModule, target: str
) -> bool:
    """Whether the delta is transpose(B @ A): always for embeddings, else per fan_in_fan_out,
    unless only the other orientation fits (peft decides by layer type: Conv1D is fan-in-first)."""
    _base_tensor(base, adapter, target, m.b)
    delta = (adapter.info(m.b).shape[0], adapter.info(m.a).shape[1])  # B @ A
    shape = base.info(target).shape
    if m.embedding:
        options = [True]
    else:
        options = [config.fan_in_fan_out, not config.fan_in_fan_out]
    for transposed in options:
        if shape == (delta[::-1] if transposed else delta):
            _check_magnitude(base, adapter, m, target, delta[0])
            return transposed
    raise _mismatch(
        base,
        adapter,
        target,
        m.b,
        delta[::-1] if options[0] else delta,
        "lora_B @ lora_A gives a delta of shape",
    )


def _check_magnitude(
    base: Source, adapter: Checkpoint, m: LoraModule, target: str, out: int
) -> None:
    if m.magnitude is not None and adapter.info(m.magnitude).shape != (out,):
        raise _mismatch(
            base,
            adapter,
            target,
            m.magnitude,
            adapter.info(m.magnitude).shape,
            f"the DoRA magnitude must have {out} entries, it has shape",
        )


def _check_bias(base: Source, adapter: Checkpoint, module: str, bias: str) -> str:
    """The base tensor that adapter tensor `bias` (of `module`) adds to, checked."""
    name = f"{module}.bias"
    if name not in base:
        raise InputError(
            f"adapter tensor {bias!r} ({adapter.path}) adds a LoRA bias to {name!r}, but the "
            f"base layer has no bias ({base.label})",
            "peft cannot merge lora_bias=True into a layer without bias either; check `base`.",
        )
    _base_tensor(base, adapter, name, bias)
    if adapter.info(bias).shape != base.info(name).shape:
        raise _mismatch(
            base, adapter, name, bias, adapter.info(bias).shape, "the LoRA bias has shape"
        )
    return name


# ---------------------------------------------------------------- jobs and arithmetic


def apply_steps(
    w: torch.Tensor, tensors: tuple[torch.Tensor, ...], steps: list[Step]
) -> torch.Tensor:
    """Run `steps` on base tensor `w`, in fp32 (fp64 if an input is); `tensors` are the steps'
    adapter tensors in order. The result is rounded once to the output dtype, by the caller.

    W is widened to fp32 once, exactly (every fp16/bf16 value is an fp32 value).
    """
    acc = accumulate_dtype(w.dtype, *(t.dtype for t in tensors))
    args = iter(t.to(acc) for t in tensors)
    for step in steps:
        if step.kind == "replace":
            w = next(args)
        elif step.kind == "bias":
            w = w + next(args) * step.scaling
        elif step.dora:
            a, b, magnitude = next(args), next(args), next(args)
            w = dora_merge(
                w, lora_delta(a, b, step.scaling, step.transposed), magnitude, step.transposed
            )
        else:
            a, b = next(args), next(args)
            # delta + W in the product's buffer: IEEE addition commutes, so this is peft's
            # `W += delta` bit for bit, rounded once by the caller. W is widened a block at a
            # time: a mixed-dtype add runs a slow per-element path (1.7x slower on fp16)
            if step.transposed:
                w = _add_widened(lora_delta(a, b, step.scaling, True), w)
            else:
                w = _add_widened(_product(a, b), w, step.scaling)
    return w


# a cache-sized block of rows (kernels.BLOCK values: one op stays in the calling thread)
_BLOCK_BYTES = BLOCK * 4


def _add_widened(acc: torch.Tensor, w: torch.Tensor, scaling: float | None = None) -> torch.Tensor:
    """acc += w (with `scaling`: acc = acc * scaling + w), w widened to acc's dtype exactly, a
    block of rows at a time: a widened copy of the whole of w would cost a tensor-sized buffer
    and a pass through memory, and so would a separate pass for the scaling."""
    if w.dim() < 2:
        if scaling is not None:
            acc.mul_(scaling)
        return acc.add_(w.to(acc.dtype))
    row = acc[0].numel()
    rows = max(1, _BLOCK_BYTES // (row * acc.element_size()))
    flat = scratch(0, acc.dtype, max(BLOCK, rows * row))
    for start in range(0, w.shape[0], rows):
        stop = min(start + rows, w.shape[0])
        part = flat[: (stop - start) * row].view(stop - start, *w.shape[1:]).copy_(w[start:stop])
        target = acc[start:stop]
        if scaling is not None:
            target.mul_(scaling)
        target.add_(part)
    return acc


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """B @ A in a pooled buffer (a fresh tensor-sized one costs a page fault per 4 KiB)."""
    with intra_op_threads(DEFAULT_THREADS):  # the thread count it has always had
        return torch.mm(b, a, out=empty_tensor((b.shape[0], a.shape[1]), b.dtype))


def lora_delta(a: torch.Tensor, b: torch.Tensor, scaling: float, transposed: bool) -> torch.Tensor:
    """peft's get_delta_weight: transpose(B @ A, fan_in_fan_out) * scaling, in this op order
    (the scaling is applied in place: same kernel, same values, one tensor fewer).

    Merge jobs run on the CPU whatever the device: a GPU matmul sums in another order, and the
    output bytes must not depend on `device` (nor differ from peft).
    """
    product = _product(a, b)
    return (product.T if transposed else product).mul_(scaling)


def dora_merge(
    w: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, transposed: bool
) -> torch.Tensor:
    """peft's DoRA merge: m / ||W + ΔW|| * (W + ΔW), the norm taken over the input dimension
    (DoraLinearLayer.get_weight_norm; embeddings count as transposed)."""
    # the same views and ops as peft, so the norm sums in the same order
    oriented = (w.T if transposed else w) + 1 * (delta.T if transposed else delta)
    # a reduction: on the CPU (merge jobs always run there) for the same reason as the product
    with intra_op_threads(DEFAULT_THREADS):
        norm = torch.linalg.norm(oriented, dim=1).to(oriented.dtype)
    factor = (magnitude / norm).view(-1, 1)
    return (factor.T if transposed else factor) * (w + delta)
