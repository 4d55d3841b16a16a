"""Checkpoint output: a run of jobs into a new folder, atomically, resumed after a kill.

`write_checkpoint` is every command's outline: check the plan and the output folder, run the
jobs (weightkit.engine) into shard files (weightkit.io.writer, or a command's own kind of file)
inside a hidden folder, keep a journal of finished shards so a killed run resumes after the
last one, write the tensor manifest and the side files, and return a WriteResult.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from weightkit.device import resolve_device
from weightkit.dtypes import safetensors_name
from weightkit.engine import Job, RunStats, checkable, memory_needs, run_jobs
from weightkit.errors import InputError
from weightkit.io.disk import free_bytes
from weightkit.io.journal import Journal, run_key
from weightkit.io.output import OutputFolder
from weightkit.io.tensor_info import TensorInfo
from weightkit.io.writer import CheckpointFiles, check_dtypes
from weightkit.manifest import Manifest
from weightkit.options import WriteOptions
from weightkit.progress import ByteProgress
from weightkit.results import Needs, WriteResult, output_error


@dataclass(frozen=True)
class _Run:
    """One write_checkpoint call, as _write_into needs it."""

    title: str
    jobs: Sequence[Job]
    plan: list[TensorInfo]
    inputs: list[Path]
    files: CheckpointFiles
    options: WriteOptions
    device: torch.device
    expected: Manifest | None
    out: Path  # where the folder appears (the tensors' check names it)
    side: Manifest | None


def write_checkpoint(
    out: str | Path,
    jobs: Sequence[Job],
    *,
    title: str,
    inputs: list[Path],
    options: WriteOptions,
    side_files: Sequence[Callable[[Path], list[str]]] = (),
    finish: Callable[[Path], list[str]] | None = None,
    expected: Manifest | None = None,
    expected_what: str = "the expected model",
    notes: Sequence[str] = (),
    log: Sequence[str] = (),
    side_manifest: Manifest | None = None,
    files: CheckpointFiles | None = None,
) -> WriteResult:
    """Run `jobs` into a new checkpoint folder at `out`, atomically, with its tensor manifest;
    prints nothing (a progress bar where `options.show_progress`) and returns what it did.

    `finish`, if given, runs on the still-hidden folder after the tensors are written (to add
    files of the command's own) and returns notes for the summary. Then each of `side_files`
    (the inputs' config and tokenizer files: see weightkit.sources) writes into it what is not
    there yet, so the first one wins.
    A killed or interrupted run of the same command is resumed after its last finished shard;
    `side_manifest`, which the jobs fill as they compute (diff's target manifest), is kept in
    the journal with each shard and refilled on resume.
    With `options.dry_run`, everything is checked and the needs are returned, but nothing is
    written. `files` (default: checkpoint shards in `options.format`) is what the tensors are
    written as. `notes` and `log` start the result's.
    """
    plan = [j.out for j in jobs]
    if not plan:
        raise InputError(f"{title}: nothing to write (the inputs hold no tensors)")
    files = files if files is not None else CheckpointFiles(options.format)
    check_dtypes(plan)
    dev = resolve_device(options.device)
    needed = sum(t.nbytes for t in plan)
    folder = OutputFolder(
        out, inputs=list(inputs), overwrite=options.overwrite, needed_bytes=needed
    )
    if options.dry_run:
        return WriteResult(
            title,
            folder.out,
            files.format,
            [],
            len(plan),
            needed,
            0.0,
            Manifest(),
            planned_dtypes(plan),
            needed,
            notes=list(notes),
            log=list(log),
            dry_run=True,
            needs=needs(folder.out, jobs, dev),
        )
    run = _Run(
        title, jobs, plan, list(inputs), files, options, dev, expected, folder.out, side_manifest
    )
    try:
        with folder as tmp:
            result = _write_into(tmp, run)
            result.notes = [*notes, *result.notes, *(finish(tmp) if finish else [])]
            for write_side_files in side_files:
                result.notes += write_side_files(tmp)
    except OSError as e:
        raise output_error(e, folder.out, needed) from None
    result.log = list(log)
    if expected is not None:
        result.expected_what = expected_what
    return result


def planned_dtypes(plan: list[TensorInfo]) -> list[str]:
    return sorted({safetensors_name(t.dtype) for t in plan})


def _write_into(tmp: Path, run: _Run) -> WriteResult:
    files, plan, expected = run.files, run.plan, run.expected
    max_bytes = run.options.shard_bytes
    journal = Journal.open(tmp, run_key(run.title, files.key, max_bytes, plan, run.inputs))

    def shard_done(i: int) -> None:  # the writer calls it as each file is finished
        journal.record(
            names[i],
            {t.name: stats.manifest.entries[t.name] for t in shards[i]},
            None
            if side is None
            else {t.name: side.entries[t.name] for t in shards[i] if t.name in side},
        )

    writer = files.writer(tmp, plan, max_bytes, shard_done)
    shards, names = writer.shards, writer.file_names
    done = journal.finished(names, [[t.name for t in s] for s in shards], files.open)
    writer.resume(done)
    kept = Manifest({n: e for i in done for n, e in journal.shards[names[i]].items()})
    stats = RunStats(Manifest(dict(kept.entries)))
    side = run.side
    if side is not None:
        for i in done:
            side.entries.update(journal.side.get(names[i], {}))
    todo = [j for j in run.jobs if j.out.name not in kept]
    for name, entry in kept.entries.items():  # resumed tensors are checked like the others
        if checkable(expected, name, entry):
            stats.checked += 1
            if not expected.check(name, entry, str(run.out)):
                stats.within_rounding.append(name)
    with ByteProgress(
        run.title, writer.total_size, len(plan), run.options.show_progress
    ) as progress:
        progress.advance(sum(t.nbytes for t in plan if t.name in kept), len(kept))
        run_jobs(todo, writer, run.device, progress, expected, where=str(run.out), stats=stats)
        written = [p.name for p in writer.close()]
    journal.remove()
    stats.manifest.write(tmp, files.manifest_name)
    notes = (
        [
            f"Resumed a killed run: {len(done)} of {len(shards)} shard(s) were already "
            "written and checked."
        ]
        if done
        else []
    )
    return WriteResult(
        run.title,
        run.out,
        files.format,
        written,
        len(plan),
        writer.bytes_written,
        progress.elapsed,
        stats.manifest,
        sorted({e.dtype for e in stats.manifest.entries.values()}),
        writer.total_size,
        stats.checked,
        stats.within_rounding,
        notes=notes,
    )


def needs(out: Path, jobs: Sequence[Job], dev: torch.device) -> Needs:
    """What a run of `jobs` into `out` will need, from headers alone (for a dry run)."""
    largest = max((j.out for j in jobs), key=lambda t: t.nbytes)
    memory, device_memory = memory_needs(jobs)
    return Needs(
        sum(j.out.nbytes for j in jobs),
        free_bytes(out.parent),
        memory,
        device_memory if dev.type == "cuda" else None,
        largest.name,
        largest.nbytes,
    )
