"""`weightkit diff`: publish a fine-tune as tuned - raw, with a manifest that proves recovery."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from weightkit.dtypes import is_float, parse_dtype
from weightkit.engine import canonical_result
from weightkit.errors import InputError, OptionConflict
from weightkit.io.buffers import release
from weightkit.io.raw_bytes import tensor_bytes
from weightkit.io.tensor_info import TensorInfo
from weightkit.kernels import same_bytes
from weightkit.manifest import TARGET_MANIFEST_NAME, Manifest, ManifestEntry, RowHasher
from weightkit.ops import delta
from weightkit.ops.lossless import DEFAULT_LEVEL, diff_lossless
from weightkit.ops.pairing import pair_checkpoints
from weightkit.options import HubOptions, WriteOptions
from weightkit.results import WriteResult
from weightkit.sources.open import Reading, local_paths
from weightkit.sources.source import Node, SideFiles, Source, View
from weightkit.sources.write import check_output, write_source

if TYPE_CHECKING:
    from hashlib import _Hash  # typeshed's name for what hashlib.sha256() returns (stubs only)

# parameters that describe the other kind of diff (the command line also refuses them when
# given with their default value)
LOSSLESS_OWN_FORMAT = "`lossless` stores its own format: drop `dtype` and `format`."
LEVEL_OF_LOSSLESS = "`level` applies to `lossless` diffs only."
LEVELS = range(1, 20)  # zstd's, as the command line's --level takes them


def diff(
    raw: str | Path,
    tuned: str | Path,
    out: str | Path,
    *,
    dtype: str = "fp32",
    lossless: bool = False,
    level: int = DEFAULT_LEVEL,
    options: WriteOptions | None = None,
    hub: HubOptions | None = None,
) -> WriteResult:
    """Write diff = tuned - raw (computed in fp32, stored in `dtype`) into `out`; prints nothing,
    returns the result.

    Besides the diff's own manifest, `out` gets `weightkit.target-manifest.json`: the manifest of
    the tuned model, which `recover` checks its output against. Where the stored diff cannot give
    back a tensor exactly (an fp16 diff, or a change below fp32's resolution), that entry also
    records the hash recovery will produce, so the check stays exact about what it accepts.

    `lossless=True` writes a lossless diff instead (weightkit.ops.lossless: compressed bit
    patterns at zstd `level`; `options.device` does not apply, and another `dtype` or
    `options.format` than the default is refused, as is a `level` for a plain diff:
    OptionConflict). Either input is any model source (weightkit.sources): a raw Meta folder is
    read as `convert` writes it. `options`: how the output is written; `hub`: how a Hub input is
    fetched.
    """
    options = options if options is not None else WriteOptions()
    if lossless and (dtype != "fp32" or options.format != "safetensors"):
        raise OptionConflict(LOSSLESS_OWN_FORMAT)
    if not lossless and level != DEFAULT_LEVEL:
        raise OptionConflict(LEVEL_OF_LOSSLESS)
    if lossless:  # a container of its own, not a checkpoint
        if level not in LEVELS:
            raise InputError(
                f"zstd level {level} is out of range", f"Use `level` {LEVELS[0]}..{LEVELS[-1]}."
            )
        return diff_lossless(raw, tuned, out, level=level, options=options, hub=hub)
    check_output(out, local_paths(raw, tuned), options)
    reading = Reading.of(options, hub)
    view = DiffView(
        reading.open(raw, role="raw"), reading.open(tuned, role="tuned"), parse_dtype(dtype)
    )

    def finish(folder: Path) -> list[str]:
        target = view.target
        target.write(folder, TARGET_MANIFEST_NAME)
        inexact = sum(1 for e in target.entries.values() if e.recovers_to)
        if not inexact:
            return [f"Recovering from this diff gives all {len(target)} tensors bit for bit."]
        return [
            f"{inexact} of {len(target)} tensors cannot be recovered bit for bit from a "
            f"{dtype} diff (within one rounding); the target manifest records the result "
            "recovery must give."
        ]

    return write_source(
        view,
        out,
        title="diff",
        options=options,
        log=reading.log,
        finish=finish,
        side_manifest=view.target,
    )


class DiffView(View):
    """diff = tuned - raw, a tensor at a time (in fp32, stored in `diff_dtype`). As each tensor
    is computed, the tuned model's manifest entry goes into `target`: what recovery from the
    stored diff must give."""

    def __init__(self, raw: Source, tuned: Source, diff_dtype: torch.dtype) -> None:
        self.raw, self.tuned = raw, tuned
        self.label = f"the diff of {tuned.label} against {raw.label}"
        pairing = pair_checkpoints(raw, tuned, "tuned model")
        self.pairs = {p.name: p for p in pairing.pairs}
        # a tensor that is not a float is stored as the difference of its bit patterns, in its
        # own dtype (weightkit.ops.delta); `diff_dtype` is the dtype of the float ones
        self.infos = {
            p.name: TensorInfo(
                p.name,
                diff_dtype if is_float(p.other.dtype) else p.other.dtype,
                p.other.shape,
                p.other.file,
            )
            for p in pairing.pairs
        }
        self.notes = [*raw.notes, *tuned.notes, *pairing.notes()]
        self.target = Manifest()

    def node(self, name: str) -> Node:
        p, info = self.pairs[name], self.infos[name]
        entry = _TargetEntry(info.shape)

        def compute(r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            d = delta.subtract_any(r, t, info.dtype, name)
            # what recover will give, its NaNs canonical as the pipeline writes them
            recovered = canonical_result(delta.add_any(r, d, t.dtype, name))
            if entry.add(t, recovered):
                self.target.add(name, entry.result(t.dtype))
            release(recovered)
            return d

        return p.node(self.raw, self.tuned, info, compute, check_finite=is_float(info.dtype))

    @property
    def inputs(self) -> list[Path]:
        return [*self.raw.inputs, *self.tuned.inputs]

    def config(self) -> dict | None:
        return self.tuned.config()

    def side_files(self) -> list[SideFiles]:
        return self.tuned.side_files()


class _TargetEntry:
    """One tensor's target-manifest entry, hashed as its pieces arrive (in row order): the
    tuned bytes, and the bytes recovery from the stored diff will give."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.want = RowHasher(shape)
        # the recovered bytes' hash, from the first piece that differs on
        self.got: _Hash | None = None

    def add(self, tuned: torch.Tensor, recovered: torch.Tensor) -> bool:
        """Hash one piece; True once the last one is in. While every piece recovers exactly,
        one hash serves both (comparing bytes costs a tenth of hashing them)."""
        if self.got is None and not _same(tuned, recovered):
            self.got = self.want.digest.copy()  # the pieces so far were the same bytes
        if self.got is not None:
            self.got.update(tensor_bytes(recovered))
        return self.want.add(tuned)

    def result(self, dtype: torch.dtype) -> ManifestEntry:
        want = self.want.digest.hexdigest()
        got = want if self.got is None else self.got.hexdigest()
        return self.want.entry(dtype, None if got == want else got)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.device.type != "cpu" or b.device.type != "cpu":  # memcmp reads host memory only
        return bool(torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8)))
    return same_bytes(a, b)
