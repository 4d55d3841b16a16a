"""Pairing the tensors of two checkpoints (raw vs tuned, raw vs diff) before any heavy work.

Every mismatch is found from headers alone and reported with the tensor, both shapes and both
files, so a run either starts with inputs that fit or writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from weightkit.dtypes import is_float, short_name
from weightkit.errors import InputError
from weightkit.io.tensor_info import TensorInfo
from weightkit.sources.source import Node, Source, combine

# Tensors whose first dimension is the vocabulary: a fine-tune may add rows (new tokens).
_VOCAB_SUFFIXES = (
    "embed_tokens.weight",
    "lm_head.weight",
    "tok_embeddings.weight",
    "output.weight",
    "wte.weight",
    "embed_out.weight",
    "word_embeddings.weight",
)
# Buffers transformers recomputes and ignores on load; older checkpoints carry them, newer don't.
_DERIVED_SUFFIXES = ("rotary_emb.inv_freq",)


@runtime_checkable
class Listed(Protocol):
    """What pairing reads of each side: the tensor list from headers, and how messages name it
    and its files. Every Source has it, and so has a lossless diff's reader, whose tensors are
    compressed payloads that only their own view decodes."""

    label: str
    infos: dict[str, TensorInfo]

    def where(self, name: str) -> str: ...


@dataclass(frozen=True)
class Pair:
    name: str
    raw: TensorInfo
    other: TensorInfo

    @property
    def extra_rows(self) -> int:
        """Rows the other side has beyond raw's (vocabulary extension); 0 when shapes agree."""
        return self.other.shape[0] - self.raw.shape[0] if self.raw.shape else 0

    def rows(self, start: int, stop: int) -> list[tuple[int, int]]:
        """The rows of raw and of the other side that rows [start, stop) of the result need;
        raw's part is a prefix of the other's when the vocabulary was extended (possibly empty)."""
        shared = self.raw.shape[0]
        return [(min(start, shared), min(stop, shared)), (start, stop)]

    def node(
        self,
        raw: Source,
        other: Source,
        out: TensorInfo,
        compute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        check_finite: bool = True,
    ) -> Node:
        """The result `compute(raw tensor, other tensor)` as a node, streaming in row pieces;
        `check_finite` as the pipeline's Job has it (False for bit-pattern arithmetic)."""
        return combine(
            out,
            [raw.node(self.name), other.node(self.name)],
            compute,
            self.rows,
            check_finite=check_finite,
        )


@dataclass
class Pairing:
    pairs: list[Pair]
    skipped: list[str]  # derived buffers present on one side only

    def notes(self) -> list[str]:
        out = []
        extended = [p for p in self.pairs if p.extra_rows]
        for p in extended:
            out.append(
                f"{p.name}: vocabulary extended from {p.raw.shape[0]} to "
                f"{p.other.shape[0]} rows; the {p.extra_rows} new rows are the diff's own."
            )
        if self.skipped:
            out.append(
                f"Skipped {len(self.skipped)} derived buffer(s) present on one side only "
                f"({self.skipped[0]}{', …' if len(self.skipped) > 1 else ''})."
            )
        return out


def pair_checkpoints(raw: Listed, other: Listed, other_role: str) -> Pairing:
    """Match every tensor of `other` (the tuned model or the diff) with raw's, in other's order."""
    skipped = sorted(n for n in set(raw.infos) ^ set(other.infos) if n.endswith(_DERIVED_SUFFIXES))
    only_other = [n for n in other.infos if n not in raw.infos and n not in skipped]
    only_raw = [n for n in raw.infos if n not in other.infos and n not in skipped]
    if only_other:
        raise InputError(
            f"tensor {only_other[0]!r} is in the {other_role} "
            f"({other.where(only_other[0])}) but not in the raw model ({raw.label})"
            + _more(only_other),
            f"Check that `raw` is the base model this {other_role} was made against.",
        )
    if only_raw:
        raise InputError(
            f"tensor {only_raw[0]!r} is in the raw model ({raw.where(only_raw[0])}) "
            f"but missing from the {other_role} ({other.label})" + _more(only_raw),
            f"The {other_role} is incomplete or for another model; download it again.",
        )
    pairs = []
    for name, info in other.infos.items():
        if name in skipped:
            continue
        pair = Pair(name, raw.infos[name], info)
        _check_shapes(pair, other_role)
        _check_dtypes(pair, other_role)
        pairs.append(pair)
    return Pairing(pairs, skipped)


def _check_dtypes(p: Pair, other_role: str) -> None:
    a, b = p.raw.dtype, p.other.dtype
    if a == b or (is_float(a) and is_float(b)):
        return
    if a.is_floating_point and b.is_floating_point:  # one of them has no value arithmetic
        packed = a if not is_float(a) else b
        hint = (
            f"weightkit adds and subtracts {short_name(packed)} tensors bit for bit only, "
            "so both sides need that dtype"
        )
    else:
        hint = (
            "Weight arithmetic needs floating-point tensors on both sides (or the same "
            "integer dtype)"
        )
    raise InputError(
        f"tensor {p.name!r}: dtype {short_name(b)} in the {other_role} ({p.other.file}) does not "
        f"fit dtype {short_name(a)} in the raw model ({p.raw.file})",
        f"{hint}; the {other_role} was not made against this raw model.",
    )


def _check_shapes(p: Pair, other_role: str) -> None:
    r, o = p.raw.shape, p.other.shape
    if r == o:
        return
    grows_vocab = (
        p.name.endswith(_VOCAB_SUFFIXES)
        and len(r) == len(o)
        and len(r) >= 1
        and r[1:] == o[1:]
        and o[0] > r[0]
    )
    if grows_vocab:
        return
    raise InputError(
        f"tensor {p.name!r}: shape {list(o)} in the {other_role} ({p.other.file}) does not fit "
        f"shape {list(r)} in the raw model ({p.raw.file})",
        f"The {other_role} was made against a different base model; check `raw`.",
    )


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""
