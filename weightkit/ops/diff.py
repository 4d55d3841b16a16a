"""`weightkit diff`: publish a fine-tune as tuned - raw, with a manifest that proves recovery."""

from __future__ import annotations

import hashlib
from collections import deque
from pathlib import Path

import torch

from weightkit.dtypes import is_float, parse_dtype, safetensors_name
from weightkit.errors import InputError, OptionConflict
from weightkit.io.buffers import release
from weightkit.io.reader import Checkpoint, open_checkpoint
from weightkit.io.tensor_info import tensor_bytes
from weightkit.io.writer import PlannedTensor, parse_size
from weightkit.kernels import same_bytes
from weightkit.manifest import TARGET_MANIFEST_NAME, Manifest, ManifestEntry
from weightkit.ops import delta
from weightkit.ops.lossless import DEFAULT_LEVEL, diff_lossless
from weightkit.ops.pairing import Pair, pair_checkpoints
from weightkit.pipeline import Job, WriteResult, canonical_result, write_checkpoint

# options that describe the other kind of diff (the command line also refuses them when given
# with their default value)
LOSSLESS_OWN_FORMAT = "--lossless stores its own format: drop --dtype and --format."
LEVEL_OF_LOSSLESS = "--level applies to --lossless diffs only."
LEVELS = range(1, 20)  # zstd's, as the command line's --level takes them


def diff(
    raw: str | Path,
    tuned: str | Path,
    out: str | Path,
    *,
    dtype: str = "fp32",
    fmt: str = "safetensors",
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    device: str = "auto",
    quiet: bool = False,
    dry_run: bool = False,
    lossless: bool = False,
    level: int = DEFAULT_LEVEL,
) -> WriteResult:
    """Write diff = tuned - raw (computed in fp32, stored in `dtype`) into `out`.

    Besides the diff's own manifest, `out` gets `weightkit.target-manifest.json`: the manifest of
    the tuned model, which `recover` checks its output against. Where the stored diff cannot give
    back a tensor exactly (an fp16 diff, or a change below fp32's resolution), that entry also
    records the hash recovery will produce, so the check stays exact about what it accepts.

    `lossless=True` writes a lossless diff instead (weightkit.ops.lossless: compressed bit
    patterns at zstd `level`; `device` does not apply, and another `dtype` or `fmt` than the
    default is refused, as is a `level` for a plain diff: OptionConflict).
    """
    if lossless and (dtype != "fp32" or fmt != "safetensors"):
        raise OptionConflict(LOSSLESS_OWN_FORMAT)
    if not lossless and level != DEFAULT_LEVEL:
        raise OptionConflict(LEVEL_OF_LOSSLESS)
    if lossless:  # a container of its own, not a checkpoint
        if level not in LEVELS:
            raise InputError(f"zstd level {level} is out of range",
                             f"Use --level {LEVELS[0]}..{LEVELS[-1]}.")
        parse_size(max_shard_size)  # refused by a dry run too, as the real run refuses it
        return diff_lossless(raw, tuned, out, level=level, max_shard_size=max_shard_size,
                             overwrite=overwrite, quiet=quiet, dry_run=dry_run)
    raw_ckpt, tuned_ckpt = open_checkpoint(raw), open_checkpoint(tuned)
    diff_dtype = parse_dtype(dtype)
    pairing = pair_checkpoints(raw_ckpt, tuned_ckpt, "tuned model")
    target = Manifest()
    jobs = [_job(p, raw_ckpt, tuned_ckpt, diff_dtype, target) for p in pairing.pairs]

    def finish(folder: Path) -> list[str]:
        target.write(folder, TARGET_MANIFEST_NAME)
        inexact = sum(1 for e in target.entries.values() if e.recovers_to)
        if not inexact:
            return [f"Recovering from this diff gives all {len(target)} tensors bit for bit."]
        return [f"{inexact} of {len(target)} tensors cannot be recovered bit for bit from a "
                f"{dtype} diff (within one rounding); the target manifest records the result "
                "recovery must give."]

    return write_checkpoint(
        out, jobs, title="diff", inputs=[raw_ckpt.path, tuned_ckpt.path],
        side_files_from=[tuned_ckpt.folder], fmt=fmt, max_shard_size=max_shard_size,
        overwrite=overwrite, device=device, quiet=quiet, dry_run=dry_run, notes=pairing.notes(),
        finish=finish, side_manifest=target,
    )


def _job(p: Pair, raw: Checkpoint, tuned: Checkpoint, diff_dtype: torch.dtype,
         target: Manifest) -> Job:
    # a tensor that is not a float is stored as the difference of its bit patterns, in its own
    # dtype (weightkit.ops.delta); --dtype is the dtype of the float ones
    out_dtype = diff_dtype if is_float(p.other.dtype) else p.other.dtype
    entry = _TargetEntry(p.other.shape)

    def compute(r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return delta.subtract_any(r, t, out_dtype, p.name)

    def after(inputs: tuple[torch.Tensor, torch.Tensor], d: torch.Tensor) -> None:
        # on the CPU copies, whatever the device: what recover will give (the same bytes on
        # every device), compared with the tuned bytes here and hashed, where it must be, by
        # the writer thread (hashing took a quarter of diff's compute thread)
        r, t = inputs
        recovered = canonical_result(delta.add_any(r, d, t.dtype, p.name))
        if not entry.add(t, recovered):
            release(recovered)
            recovered = None
        pending.append(recovered)

    def written(inputs: tuple[torch.Tensor, torch.Tensor], d: torch.Tensor) -> None:
        recovered = pending.popleft()
        if entry.add_recovered(inputs[1], recovered):
            target.add(p.name, entry.result(p.other.dtype))
        if recovered is not None:
            release(recovered)

    pending: deque[torch.Tensor | None] = deque()  # after() -> written(), piece by piece
    return Job(PlannedTensor(p.name, out_dtype, p.other.shape), lambda: p.read(raw, tuned),
               compute, check_finite=is_float(out_dtype),
               load_rows=lambda start, stop: p.read_rows(raw, tuned, start, stop),
               after=after, written=written)


class _TargetEntry:
    """One tensor's target-manifest entry, hashed as its pieces arrive (in row order): the
    tuned bytes, and the bytes recovery from the stored diff will give."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.rows_left = shape[0] if shape else 1
        self.want = hashlib.sha256()
        self.got = None  # the recovered bytes' hash, from the first piece that differs on

    def add(self, tuned: torch.Tensor, recovered: torch.Tensor) -> bool:
        """Hash one tuned piece (on the compute thread); True if its recovered bytes must be
        hashed too. While every piece recovers exactly, one hash serves both (comparing bytes
        costs a tenth of hashing them)."""
        if self.got is None and not same_bytes(tuned, recovered):
            self.got = self.want.copy()  # the pieces so far were the same bytes
        self.want.update(tensor_bytes(tuned))
        return self.got is not None

    def add_recovered(self, tuned: torch.Tensor, recovered: torch.Tensor | None) -> bool:
        """Hash the piece's recovered bytes if add() said so (on the writer thread, in order);
        True once the last piece is in."""
        if recovered is not None:
            self.got.update(tensor_bytes(recovered))
        self.rows_left -= tuned.shape[0] if self.shape else 1
        return self.rows_left == 0

    def result(self, dtype: torch.dtype) -> ManifestEntry:
        want = self.want.hexdigest()
        got = want if self.got is None else self.got.hexdigest()
        return ManifestEntry(safetensors_name(dtype), self.shape, want,
                             None if got == want else got)
