"""The one interface every model input has (`Source`), the lazy tensor each is made of (`Node`),
and the shared half of a source computed from others (`View`).

A source is a model to read: its tensor names, dtypes and shapes (from headers), each tensor on
demand, and what comes with it (config, tokenizer files). Stored sources read files; a view
computes each tensor from the tensors of other sources when it is asked for. Every command then
writes one source (`weightkit.sources.write.write_source`): `convert` a raw Meta folder's view,
`recover` a recovered model, the fused chain a merged model over a recovered model over a raw Meta
folder; the tensors of the models between the steps are computed in the same pass and never
written.

A tensor of a source is a `Node`, which is the pipeline's `Job` (what to read, in the reader
thread, and the arithmetic, on the device in the compute thread) plus how many tensors its read
gives, so that a view builds its nodes from its inputs' nodes (`combine`) instead of reading
their values: every step of a fused chain computes on the device, as the single commands do.
mergekit's lazy tensor graph is the model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from weightkit.engine import Job, checkable, identity, refuse_new_non_finite
from weightkit.io.buffers import release
from weightkit.io.output import copy_side_files
from weightkit.io.reader import Checkpoint
from weightkit.io.tensor_info import Listing, TensorInfo
from weightkit.manifest import Manifest, RowHasher

# Writes a source's config and tokenizer files into an output folder, skipping names already
# there (an earlier source's win); returns notes for the summary.
SideFiles = Callable[[Path], list[str]]


@dataclass
class Node(Job):
    """One tensor of a source, not computed yet: a Job whose `load` gives `arity` tensors."""

    arity: int = 1

    def value(self, *loaded: torch.Tensor) -> torch.Tensor:
        """The tensor from what `load` gave (moved to the device), rounded to the node's dtype:
        what the command that makes this source alone would have written."""
        t = self.compute(*loaded)
        return t if t.dtype == self.out.dtype else t.to(self.out.dtype)


@runtime_checkable
class Source(Protocol):
    """A model to read tensors from: a checkpoint on disk, a raw Meta folder read as HF, or a model
    computed from other sources."""

    label: str  # how messages name it: its path, or what it is computed from
    infos: dict[str, TensorInfo]  # name -> dtype, shape, in the source's order (from headers)
    notes: list[str]  # what the summary should say about how it was read or computed
    # the manifest its tensors must hash to, where one is known (a recovered model: the diff's
    # target manifest); whoever reads it checks them
    expected: Manifest | None

    def __contains__(self, name: object) -> bool: ...
    def __len__(self) -> int: ...
    def names(self) -> list[str]: ...
    def info(self, name: str) -> TensorInfo: ...

    def where(self, name: str) -> str:
        """The file holding tensor `name`, or what it is computed from (for messages)."""

    def read(self, name: str) -> torch.Tensor:
        """The tensor in a CPU buffer, in its dtype."""

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the tensor's first dimension."""

    def node(self, name: str) -> Node:
        """How the tensor is made, for the pipeline or for a view built on this source."""

    @property
    def inputs(self) -> list[Path]:
        """Every file or folder it reads (the resume key, and what the output must not overlap)."""

    def config(self) -> dict[str, Any] | None:
        """Its config.json as a dict (generated, for a raw Meta folder); None when it has none."""

    def side_files(self) -> list[SideFiles]:
        """Its config and tokenizer files, in the order they win (call before the run: a raw
        Meta folder starts converting its tokenizer then, while the weights stream)."""


class View(Listing):
    """The shared half of a source computed from others: its tensors are its nodes' values."""

    label: str
    infos: dict[str, TensorInfo]
    notes: list[str]
    expected: Manifest | None = None

    def node(self, name: str) -> Node:
        raise NotImplementedError

    def where(self, name: str) -> str:
        return self.label

    def read(self, name: str) -> torch.Tensor:
        node = self.node(name)
        return _value_of(node, node.load())

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        node = self.node(name)
        if node.load_rows is None:  # computed whole (a merged tensor)
            return self.read(name)[start:stop].clone()
        # a node computes rows from a multiple of its row_multiple (whole rotary heads) on
        stop = min(stop, node.out.shape[0])
        first = start - start % node.row_multiple
        last = min(-(-stop // node.row_multiple) * node.row_multiple, node.out.shape[0])
        rows = _value_of(node, node.load_rows(first, last))
        return (
            rows if (first, last) == (start, stop) else rows[start - first : stop - first].clone()
        )


def _value_of(node: Node, loaded: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The node's value on the CPU; its inputs' buffers go back to the pool (in a pipeline run)."""
    t = node.value(*loaded)
    ptr = t.untyped_storage().data_ptr()
    for x in loaded:
        if x.untyped_storage().data_ptr() != ptr:
            release(x)
    return t


def stored_node(
    out: TensorInfo, read: Callable[[], torch.Tensor], read_rows: Callable[[int, int], torch.Tensor]
) -> Node:
    """A tensor read as it is stored: nothing to compute."""
    return Node(
        out, lambda: (read(),), identity, load_rows=lambda start, stop: (read_rows(start, stop),)
    )


def checkpoint_node(checkpoint: Checkpoint, name: str) -> Node:
    """Tensor `name` of a checkpoint on disk as the pipeline reads it: as stored, in row pieces
    when large."""
    return stored_node(
        checkpoint.infos[name],
        lambda: checkpoint.read(name),
        lambda start, stop: checkpoint.read_rows(name, start, stop),
    )


class StoredSource(Listing):
    """A checkpoint on disk (weightkit.io.reader) as a source: its tensors as stored, its config
    and tokenizer files copied from its folder."""

    expected: Manifest | None = None  # nothing to check its tensors against

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.label = checkpoint.label
        self.infos = checkpoint.infos
        self.notes: list[str] = []

    def where(self, name: str) -> str:
        return self.checkpoint.where(name)

    def read(self, name: str) -> torch.Tensor:
        return self.checkpoint.read(name)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self.checkpoint.read_rows(name, start, stop)

    def node(self, name: str) -> Node:
        return checkpoint_node(self.checkpoint, name)

    @property
    def inputs(self) -> list[Path]:
        return [self.checkpoint.path]

    def config(self) -> dict[str, Any] | None:
        return self.checkpoint.config()

    def side_files(self) -> list[SideFiles]:
        return [folder_files(self.checkpoint.folder)]


def combine(
    out: TensorInfo,
    parts: list[Node],
    compute: Callable[..., torch.Tensor],
    rows: Callable[[int, int], list[tuple[int, int]]] | None = None,
    *,
    check_finite: bool = True,
) -> Node:
    """A tensor computed from other sources' tensors: `compute` gets each part's value, in order,
    on the device. With `rows` (output rows [start, stop) -> the rows each part needs), it
    streams in row pieces when every part does. `check_finite` is the Job's (False where the
    arithmetic is on bit patterns, which have no NaN/Inf to refuse)."""

    def load() -> tuple[torch.Tensor, ...]:
        return tuple(x for p in parts for x in p.load())

    def run(*loaded: torch.Tensor) -> torch.Tensor:
        values, at = [], 0
        for p in parts:
            values.append(p.value(*loaded[at : at + p.arity]))
            at += p.arity
        return compute(*values)

    return Node(
        out,
        load,
        run,
        check_finite=check_finite,
        load_rows=_rows_of(parts, rows),
        row_multiple=math.lcm(*(p.row_multiple for p in parts)),
        arity=sum(p.arity for p in parts),
    )


def _rows_of(
    parts: list[Node], rows: Callable[[int, int], list[tuple[int, int]]] | None
) -> Callable[[int, int], tuple[torch.Tensor, ...]] | None:
    """The parts' row loaders joined (output rows [start, stop) -> what each part gives for
    the rows `rows` says it needs), or None unless every part streams."""
    if rows is None:
        return None
    loaders: list[Callable[[int, int], tuple[torch.Tensor, ...]]] = []
    for p in parts:
        if p.load_rows is None:  # computed whole
            return None
        loaders.append(p.load_rows)

    def load_rows(start: int, stop: int) -> tuple[torch.Tensor, ...]:
        return tuple(
            x for load, (a, b) in zip(loaders, rows(start, stop), strict=True) for x in load(a, b)
        )

    return load_rows


def retyped(node: Node, out: TensorInfo) -> Node:
    """`node` written as `out` (another dtype): rounded to its own dtype first, as the command
    that made it would have written it, then to `out`'s by the pipeline."""
    if node.out.dtype == out.dtype:
        return dataclasses.replace(node, out=out)
    # a stored tensor's value is what it read: pure data movement, not checked for NaN/Inf
    return dataclasses.replace(
        node,
        out=out,
        compute=node.value,
        check_finite=node.check_finite and node.compute is not identity,
    )


def checked(node: Node, expected: Manifest, entries: Manifest, where: str) -> Node:
    """`node`, its value hashed as its pieces are computed (in row order) and checked against
    `expected` once whole, as the writer checks what it writes (ChecksumError on a mismatch);
    the entry goes into `entries`. For the tensors of a model that is read, not written: they
    are refused for NaN/Inf their inputs lacked first, as the pipeline refuses them before it
    writes a tensor, so a fused run stops with the message the command alone gives."""
    name = node.out.name
    hasher = RowHasher(node.out.shape)
    arithmetic = node.check_finite and node.compute is not identity

    def compute(*loaded: torch.Tensor) -> torch.Tensor:
        t = node.value(*loaded)
        if arithmetic and t.is_floating_point():
            refuse_new_non_finite(name, t, loaded)
        if hasher.add(t):
            entry = hasher.entry(node.out.dtype)
            if checkable(expected, name, entry):
                expected.check(name, entry, where)
            entries.add(name, entry)
        return t

    # the value is checked here; what reads it checks its own arithmetic
    return dataclasses.replace(node, compute=compute, check_finite=False)


def tally(expected: Manifest, entries: Manifest, where: str) -> tuple[int, list[str]]:
    """(tensors checked, those that matched the predicted within-one-rounding result) among
    `entries` (each was checked when it was computed; resumed ones come from the journal)."""
    checked_names = [n for n, e in entries.entries.items() if checkable(expected, n, e)]
    within = [n for n in checked_names if not expected.check(n, entries.entries[n], where)]
    return len(checked_names), within


def folder_files(folder: Path) -> SideFiles:
    """A stored model's config and tokenizer files: copied from its folder."""

    def copy(dest: Path) -> list[str]:
        copy_side_files([folder], dest)
        return []

    return copy
