"""`weightkit recover`: tuned = raw + diff, streaming, checked against the diff's manifest."""

from __future__ import annotations

from pathlib import Path

import torch

from weightkit.dtypes import is_float, output_dtype, parse_dtype, torch_dtype, wider
from weightkit.errors import InputError, OptionConflict
from weightkit.io.lossless_diff import is_lossless_diff
from weightkit.io.reader import Checkpoint, open_checkpoint
from weightkit.io.writer import PlannedTensor
from weightkit.manifest import TARGET_MANIFEST_NAME, Manifest
from weightkit.ops import delta
from weightkit.ops.lossless import recover_lossless
from weightkit.ops.pairing import Pair, pair_checkpoints
from weightkit.pipeline import Job, WriteResult, write_checkpoint


def recover(
    raw: str | Path,
    diff: str | Path,
    out: str | Path,
    *,
    dtype: str = "auto",
    fp16: bool = False,
    fmt: str = "safetensors",
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    device: str = "auto",
    quiet: bool = False,
    dry_run: bool = False,
) -> WriteResult:
    """Write tuned = raw + diff (added in fp32) into `out`.

    dtype "auto" writes what the diff's target manifest says the tuned model was, or else the
    wider of the raw and diff dtypes, so no precision is lost; another dtype converts the plain
    float tensors (fp32, fp16, bf16). `fp16=True` is KnowLM's spelling of "the diff is fp16" and
    writes fp16; with another `dtype` it is refused (OptionConflict). Tensors that are not floats
    are added bit for bit (weightkit.ops.delta).
    """
    if fp16 and dtype not in ("auto", "fp16"):
        raise OptionConflict(f"--fp16 writes fp16 and --dtype {dtype} asks for {dtype}: "
                             "give one of them")
    forced = torch.float16 if fp16 else (None if dtype == "auto" else parse_dtype(dtype))
    if is_lossless_diff(diff):  # compressed bit patterns, see weightkit.ops.lossless
        return recover_lossless(raw, diff, out, dtype=forced, fmt=fmt,
                                max_shard_size=max_shard_size, overwrite=overwrite, quiet=quiet,
                                dry_run=dry_run)
    raw_ckpt, diff_ckpt = open_checkpoint(raw), open_checkpoint(diff)
    pairing = pair_checkpoints(raw_ckpt, diff_ckpt, "diff")
    target = Manifest.find(diff_ckpt.folder, TARGET_MANIFEST_NAME)
    jobs = [_job(p, raw_ckpt, diff_ckpt, _out_dtype(p, forced, target, diff_ckpt.folder))
            for p in pairing.pairs]
    return write_checkpoint(
        out, jobs, title="recover", inputs=[raw_ckpt.path, diff_ckpt.path],
        side_files_from=[diff_ckpt.folder, raw_ckpt.folder], fmt=fmt,
        max_shard_size=max_shard_size, overwrite=overwrite, device=device, quiet=quiet,
        dry_run=dry_run,
        expected=target, expected_what="the tuned model", notes=pairing.notes(),
    )


def _out_dtype(p: Pair, forced: torch.dtype | None, target: Manifest | None,
               folder: Path) -> torch.dtype:
    """The tuned model's dtype (from the target manifest), else the wider of raw's and the
    diff's; --dtype converts it when that is a plain float. A tensor that is not a float keeps
    its dtype (pairing made it the same on both sides)."""
    if not is_float(p.raw.dtype):
        return p.other.dtype
    if target is not None and p.name in target:
        name = target.entries[p.name].dtype
        where = f"tensor {p.name!r} in {folder / TARGET_MANIFEST_NAME}"
        try:
            return output_dtype(torch_dtype(name, where), forced)
        except KeyError:
            raise InputError(f"{where} has dtype {name!r}, which is not a safetensors dtype",
                             "The target manifest is damaged; download the diff again.") from None
    return output_dtype(wider(p.raw.dtype, p.other.dtype), forced)


def _job(p: Pair, raw: Checkpoint, diff: Checkpoint, out_dtype: torch.dtype) -> Job:
    def compute(r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return delta.add_any(r, d, out_dtype, p.name, reuse_diff=True)

    return Job(PlannedTensor(p.name, out_dtype, p.other.shape), lambda: p.read(raw, diff),
               compute, check_finite=is_float(out_dtype),
               load_rows=lambda start, stop: p.read_rows(raw, diff, start, stop))
