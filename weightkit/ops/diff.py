"""`weightkit diff`: publish a fine-tune as tuned - raw, with a manifest that proves recovery."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from weightkit.dtypes import parse_dtype, safetensors_name
from weightkit.io.reader import Checkpoint, open_checkpoint
from weightkit.io.tensor_info import tensor_bytes
from weightkit.io.writer import PlannedTensor
from weightkit.manifest import TARGET_MANIFEST_NAME, Manifest, ManifestEntry
from weightkit.ops import delta
from weightkit.ops.lossless import DEFAULT_LEVEL, diff_lossless
from weightkit.ops.pairing import Pair, pair_checkpoints
from weightkit.pipeline import Job, WriteResult, write_checkpoint


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
    patterns at zstd `level`; `dtype`, `fmt` and `device` do not apply).
    """
    if lossless:  # a container of its own, not a checkpoint
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
    out_dtype = diff_dtype if p.other.dtype.is_floating_point else p.other.dtype
    shape = p.other.shape
    rows = shape[0] if shape else 1
    # the target entry hashes the whole tuned tensor and its recovery; pieces come in row order
    state = {"want": hashlib.sha256(), "got": hashlib.sha256(), "rows": 0}

    def load() -> tuple[torch.Tensor, torch.Tensor]:
        return raw.read(p.name), tuned.read(p.name)

    def load_rows(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        shared = p.raw.shape[0]  # raw may have fewer rows (vocabulary extension)
        return (raw.read_rows(p.name, min(start, shared), min(stop, shared)),
                tuned.read_rows(p.name, start, stop))

    def compute(r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        d = delta.subtract(r, t, out_dtype)
        state["want"].update(tensor_bytes(t))
        state["got"].update(tensor_bytes(delta.add(r, d, t.dtype)))
        state["rows"] += t.shape[0] if shape else 1
        if state["rows"] == rows:
            want, got = state["want"].hexdigest(), state["got"].hexdigest()
            target.add(p.name, ManifestEntry(safetensors_name(t.dtype), shape, want,
                                             None if got == want else got))
        return d

    return Job(PlannedTensor(p.name, out_dtype, shape), load, compute, load_rows=load_rows)
