"""`weightkit recover`: tuned = raw + diff, streaming, checked against the diff's manifest.

`RecoveredView` is the recovered model as a source (weightkit.sources): `recover` writes it;
with `lora` a merged view over it is written instead, the adapter merged into each recovered
tensor in the same pass, and the recovered model is never written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from weightkit.dtypes import is_float, output_dtype, parse_dtype, torch_dtype, wider
from weightkit.errors import InputError, OptionConflict
from weightkit.io.lossless_diff import is_lossless_diff
from weightkit.io.tensor_info import TensorInfo
from weightkit.manifest import TARGET_MANIFEST_NAME, Manifest
from weightkit.ops import delta
from weightkit.ops.pairing import Pair, pair_checkpoints
from weightkit.options import HubOptions, WriteOptions
from weightkit.results import WriteResult
from weightkit.sources.open import Reading, local_paths, open_path
from weightkit.sources.source import Node, SideFiles, Source, View
from weightkit.sources.write import check_output, write_source

if TYPE_CHECKING:  # open_recovered imports it only for a lossless diff
    from weightkit.ops.lossless import LosslessRecoveredView


def recover(
    raw: str | Path,
    diff: str | Path,
    out: str | Path,
    *,
    lora: str | Path | None = None,
    dtype: str = "auto",
    fp16: bool = False,
    options: WriteOptions | None = None,
    hub: HubOptions | None = None,
) -> WriteResult:
    """Write tuned = raw + diff (added in fp32) into `out`; prints nothing, returns the result.

    dtype "auto" writes what the diff's target manifest says the tuned model was, or else the
    wider of the raw and diff dtypes, so no precision is lost; another dtype converts the plain
    float tensors (fp32, fp16, bf16). `fp16=True` is KnowLM's spelling of "the diff is fp16" and
    writes fp16; with another `dtype` it is refused (OptionConflict). Tensors that are not floats
    are added bit for bit (weightkit.ops.delta). `options`: how the checkpoint is written;
    `hub`: how a Hub input is fetched.

    Each input is any model source (weightkit.sources): a raw Meta folder as `raw` is read as
    convert writes it in `dtype`. With `lora`, that adapter is merged into the recovered model
    in the same pass: the bytes of `recover` then `merge_lora` in `dtype`, without the
    recovered model on disk; its tensors are still checked against the diff's target manifest.
    """
    options = options if options is not None else WriteOptions()
    if fp16 and dtype not in ("auto", "fp16"):
        raise OptionConflict(
            f"`fp16` writes fp16 and `dtype` {dtype} asks for {dtype}: give one of them"
        )
    forced = torch.float16 if fp16 else (None if dtype == "auto" else parse_dtype(dtype))
    check_output(out, local_paths(raw, diff, lora), options)
    reading = Reading.of(options, hub)
    tuned = open_recovered(raw, diff, forced, reading)
    if lora is not None:
        from weightkit.ops.merge_lora import write_merged

        return write_merged(
            tuned, lora, out, forced, title="recover + merge-lora", options=options, reading=reading
        )
    return write_source(
        tuned,
        out,
        title="recover",
        # a lossless diff is integer work, done while loading: a GPU would only add copies
        options=options.replace(device="cpu") if tuned.lossless else options,
        log=reading.log,
        expected=tuned.expected,
        expected_what="the tuned model",
    )


def open_recovered(
    raw: str | Path, diff: str | Path, forced: torch.dtype | None, reading: Reading | None = None
) -> RecoveredView | LosslessRecoveredView:
    """The model recovered from `raw` and `diff`, as a source; nothing computed yet.

    `forced` is recover's `dtype` (None: auto); a raw Meta folder is read in it too, as
    convert would have written it.
    """
    reading = reading if reading is not None else Reading()
    raw_src = reading.open(raw, role="raw", dtype=forced)
    diff_path = reading.resolve(diff, role="diff")
    folder = diff_path if diff_path.is_dir() else diff_path.parent
    # the tuned model's manifest, which `weightkit diff` puts next to the diff's weights
    target = Manifest.find(folder, TARGET_MANIFEST_NAME)
    if is_lossless_diff(diff_path):  # compressed bit patterns, see weightkit.ops.lossless
        from weightkit.ops.lossless import LosslessRecoveredView

        return LosslessRecoveredView(raw_src, diff_path, forced, target)
    return RecoveredView(
        raw_src, open_path(diff_path, progress=reading.progress), forced, target, folder
    )


class RecoveredView(View):
    """tuned = raw + diff, a tensor at a time (added in fp32, rounded once to the output dtype;
    non-floats bit for bit). Every key and shape is paired from headers when it is made; `folder`
    holds the diff and its target manifest `target` (for messages)."""

    lossless = False

    def __init__(
        self,
        raw: Source,
        diff: Source,
        forced: torch.dtype | None,
        target: Manifest | None,
        folder: Path,
    ) -> None:
        self.raw, self.diff = raw, diff
        self.label = f"recovered from {raw.label} and {diff.label}"
        pairing = pair_checkpoints(raw, diff, "diff")
        self.expected = target
        self.pairs = {p.name: p for p in pairing.pairs}
        self.infos = {
            p.name: TensorInfo(
                p.name, _out_dtype(p, forced, target, folder), p.other.shape, p.other.file
            )
            for p in pairing.pairs
        }
        self.notes = [*raw.notes, *diff.notes, *pairing.notes()]

    def node(self, name: str) -> Node:
        out = self.infos[name]

        def add(r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
            return delta.add_any(r, d, out.dtype, name, reuse_diff=True)

        return self.pairs[name].node(
            self.raw, self.diff, out, add, check_finite=is_float(out.dtype)
        )

    @property
    def inputs(self) -> list[Path]:
        return [*self.raw.inputs, *self.diff.inputs]

    def config(self) -> dict | None:
        config = self.diff.config()
        return config if config is not None else self.raw.config()

    def side_files(self) -> list[SideFiles]:
        """The diff's config and tokenizer files, then the raw model's where the diff has none."""
        return [*self.diff.side_files(), *self.raw.side_files()]


def _out_dtype(
    p: Pair, forced: torch.dtype | None, target: Manifest | None, folder: Path
) -> torch.dtype:
    """The tuned model's dtype (from the target manifest), else the wider of raw's and the
    diff's; `dtype` converts it when that is a plain float. A tensor that is not a float keeps
    its dtype (pairing made it the same on both sides)."""
    if not is_float(p.raw.dtype):
        return p.other.dtype
    if target is not None and p.name in target:
        name = target.entries[p.name].dtype
        where = f"tensor {p.name!r} in {folder / TARGET_MANIFEST_NAME}"
        try:
            return output_dtype(torch_dtype(name, where), forced)
        except KeyError:
            raise InputError(
                f"{where} has dtype {name!r}, which is not a safetensors dtype",
                "The target manifest is damaged; download the diff again.",
            ) from None
    return output_dtype(wider(p.raw.dtype, p.other.dtype), forced)
