"""The streaming engine every command runs on: read ahead, compute, write behind.

A command turns its work into a list of `Job`s, one per output tensor, in output order; a job
whose arithmetic works row by row is cut into `Piece`s of at most 16 MiB. Three stages overlap:
a reader thread loads the inputs of the next pieces, the calling thread does the arithmetic on
the chosen device, and a writer thread hashes and writes finished pieces. Queues are bounded and
so are the bytes in flight, so peak memory follows the largest piece, not the model; buffers
come from a pool so each piece does not pay for fresh pages.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import functools
import hashlib
import math
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from weightkit.device import resolve_device
from weightkit.dtypes import NON_FINITE_BITS, count_non_finite, safetensors_name
from weightkit.errors import InputError, OutputError
from weightkit.io.buffers import BufferPool, use_pool
from weightkit.io.journal import Journal, run_key
from weightkit.io.lossless_diff import LOSSLESS_FORMAT
from weightkit.io.output import OutputFolder, free_bytes
from weightkit.io.tensor_info import PIECE_BYTES, row_ranges, tensor_bytes
from weightkit.io.writer import (
    CheckpointFiles,
    PlannedTensor,
    ShardWriter,
    check_dtypes,
    plan_shards,
)
from weightkit.kernels import (
    canonicalize_nans,
    intra_op_threads,
    pipeline_threads,
    round_into,
    scratch,
)
from weightkit.manifest import MANIFEST_NAME, TARGET_MANIFEST_NAME, Manifest, ManifestEntry
from weightkit.options import WriteOptions
from weightkit.progress import ByteProgress, human_bytes, human_time

_READ_AHEAD = 2
_WRITE_BEHIND = 2
# Output bytes that may be in flight (loaded, not yet written) at once: the queues alone would
# let several large tensors pile up, so peak memory would grow with the tensors' size. Four
# pieces: one being read, one computed, one written, one spare (more gained nothing measured).
_IN_FLIGHT = 128 * 2**20
_PIECE = PIECE_BYTES
_DONE = object()


@dataclass
class Job:
    """One output tensor: how to load its inputs (on the CPU) and how to compute it.

    With `load_rows`, compute works row by row: `load_rows(start, stop)` gives the inputs of the
    output's rows [start, stop), and a large tensor streams in pieces of bounded size, so memory
    does not follow the model's largest tensor. Pieces start at multiples of `row_multiple`.
    """

    out: PlannedTensor
    load: Callable[[], tuple[torch.Tensor, ...]]
    compute: Callable[..., torch.Tensor]  # inputs already on the device -> result there
    check_finite: bool = True  # False for pure data movement, which cannot create NaN/Inf
    load_rows: Callable[[int, int], tuple[torch.Tensor, ...]] | None = None
    row_multiple: int = 1
    # compute stays on the CPU whatever the device (its arithmetic must, or a device would
    # only add copies); identity jobs never move to a device
    cpu_only: bool = False

    def uses(self, device: torch.device) -> bool:
        """Whether this job's compute runs on `device` (else on the CPU)."""
        return device.type != "cpu" and not self.cpu_only and self.compute is not identity

    def pieces(self, max_bytes: int) -> list[Piece]:
        """The job cut into pieces of at most `max_bytes` of output where it can be."""
        shape = self.out.shape
        if self.load_rows is None or not shape or self.out.nbytes <= max_bytes:
            return [Piece(self, None)]
        return [Piece(self, rows) for rows in row_ranges(
            shape[0], self.out.nbytes // shape[0], max_bytes, self.row_multiple)]


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of a job's output, or all of it (`rows` None)."""

    job: Job
    rows: tuple[int, int] | None

    @property
    def shape(self) -> tuple[int, ...]:
        out = self.job.out.shape
        return out if self.rows is None else (self.rows[1] - self.rows[0], *out[1:])

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.job.out.dtype.itemsize

    @property
    def first(self) -> bool:
        return self.rows is None or self.rows[0] == 0

    @property
    def last(self) -> bool:
        return self.rows is None or self.rows[1] == self.job.out.shape[0]

    def load(self) -> tuple[torch.Tensor, ...]:
        return self.job.load() if self.rows is None else self.job.load_rows(*self.rows)

    def run(self, inputs: tuple[torch.Tensor, ...], device: torch.device,
            pool: BufferPool) -> torch.Tensor:
        """Compute on `device` (the CPU for a job that does not use it); the result, rounded to
        the output dtype, comes back to the CPU in a pooled buffer (a fresh one per piece would
        cost a page fault per 4 KiB), its NaNs canonical, so its bytes are the same on every
        device."""
        job = self.job
        if job.uses(device):
            try:
                result = self._compute(inputs, device, pool)
            except torch.OutOfMemoryError:
                # this piece does not fit the device's free memory now: the CPU gives the
                # same bytes (elementwise IEEE arithmetic, rounded once)
                _empty_device_cache()
                result = self._compute(inputs, _CPU, pool)
        else:
            result = self._compute(inputs, _CPU, pool)
        if (job.check_finite and job.compute is not identity and result.is_floating_point()
                and not _all_finite_fast(result)):
            refuse_new_non_finite(job.out.name, result, inputs)
            canonicalize_nans(result)  # NaN signs and payloads differ between CPUs and GPUs
        return result

    def _compute(self, inputs: tuple[torch.Tensor, ...], device: torch.device,
                 pool: BufferPool) -> torch.Tensor:
        job = self.job
        moved = inputs if device.type == "cpu" else tuple(
            x.to(device, non_blocking=True) for x in inputs)
        computed = job.compute(*moved)
        if computed.device.type != "cpu":
            computed = computed.to(job.out.dtype)  # round there: fewer bytes come back
        if tuple(computed.shape) != self.shape:
            raise RuntimeError(f"{job.out.name}: computed {tuple(computed.shape)}, "
                               f"planned {self.shape}")
        if computed.dtype == job.out.dtype and computed.device.type == "cpu":
            return computed
        result = pool.take(self.nbytes).view(job.out.dtype).view(self.shape)
        # synchronous from a device: the writer may read it at once
        round_into(result, computed, widen_first=_halves(computed, result)
                   and _all_finite_fast(computed))
        if not _shares_storage(computed, inputs):
            # a pooled scratch buffer of compute's, if it was one (inputs go back once written:
            # a buffer given back twice could be lent out twice)
            pool.give([computed])
        return result


_CPU = torch.device("cpu")


def _empty_device_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _shares_storage(t: torch.Tensor, others: tuple[torch.Tensor, ...]) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return any(o.untyped_storage().data_ptr() == ptr for o in others)


def refuse_new_non_finite(name: str, result: torch.Tensor,
                           inputs: tuple[torch.Tensor, ...]) -> None:
    """NaN/Inf that the inputs already had pass through; new ones mean the arithmetic broke."""
    if _all_finite_fast(result):
        return
    bad = count_non_finite(result)
    if bad == 0 or any(count_non_finite(x) for x in inputs):
        return
    raise InputError(
        f"tensor {name!r}: the result has {bad} NaN/Inf value(s) although its inputs are finite "
        f"(overflow in {result.dtype}?)",
        "Write a wider dtype (`dtype` fp32 or bf16), or check the adapter's scaling.",
    )


# exponent bits of the 16-bit floats: all ones means Inf or NaN
_CHECK_BLOCK = 1 << 19  # 16-bit values checked at a time
_HALF_EXPONENTS = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80}


def _all_finite_fast(x: torch.Tensor) -> bool:
    """True proves every element finite; False means: look closer. Much cheaper than isfinite,
    which runs a slow path on 16-bit floats."""
    mask = _HALF_EXPONENTS.get(x.dtype)
    if x.numel() == 0:
        return True
    if x.dtype in NON_FINITE_BITS:  # 8- and 4-bit floats: torch has no sum or isfinite for most
        return count_non_finite(x) == 0
    if mask is not None and x.device.type == "cpu" and x.is_contiguous():
        # integer ops on the bits run at memory speed; a block at a time, so the scratch is
        # cache-sized (a fresh tensor-sized one costs 5x the check in page faults)
        flat = x.view(-1).view(torch.int16)
        bits = scratch(0, torch.int16, _CHECK_BLOCK)
        for start in range(0, flat.numel(), _CHECK_BLOCK):
            part = flat[start:start + _CHECK_BLOCK]
            torch.bitwise_and(part, mask, out=bits[:part.numel()])
            if int(bits[:part.numel()].max()) == mask:
                return False
        return True
    if mask is not None:
        return int((x.view(torch.int16) & mask).max()) != mask
    return bool(torch.isfinite(x.sum()))  # a finite sum has no NaN/Inf terms


def _halves(*tensors: torch.Tensor) -> bool:
    return all(t.dtype in _HALF_EXPONENTS and t.device.type == "cpu" for t in tensors)


def canonical_result(t: torch.Tensor) -> torch.Tensor:
    """`t` as the pipeline writes a computed result: its NaNs, if any, made canonical."""
    if t.is_floating_point() and not _all_finite_fast(t):
        canonicalize_nans(t)
    return t


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class RunStats:
    manifest: Manifest  # of what was written
    checked: int = 0  # tensors checked against an expected manifest
    within_rounding: list[str] = field(default_factory=list)  # matched its predicted rounding


class InFlight:
    """A byte budget: the reader waits before loading a job that would exceed it (a job larger
    than the whole budget runs alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, nbytes: int, stop: threading.Event) -> bool:
        with self._cond:
            while self._used and self._used + nbytes > self.limit:
                if stop.is_set():
                    return False
                self._cond.wait(0.05)
            self._used += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._cond:
            self._used -= nbytes
            self._cond.notify_all()


@functools.cache
def _return_big_buffers_to_the_os() -> None:
    """Make glibc serve tensor-sized buffers with mmap, always.

    glibc raises its mmap threshold each time a large block is freed, after which tensor buffers
    come from heap arenas that fragment and grow with the number of tensors processed: peak RSS
    then creeps up with model size. A fixed threshold returns every buffer when it is freed.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def run_jobs(
    jobs: Iterable[Job],
    writer: ShardWriter,
    device: torch.device,
    progress: ByteProgress | None = None,
    expected: Manifest | None = None,
    where: str = "the output",
    stats: RunStats | None = None,
) -> RunStats:
    """Run every job, write its result, and return the manifest of what was written.

    With `expected`, each result whose name and dtype it lists is checked before it is written;
    the first mismatch stops the run (ChecksumError naming the tensor).
    """
    _return_big_buffers_to_the_os()
    pieces = [p for job in jobs for p in job.pieces(_PIECE)]
    largest = max((p.nbytes for p in pieces), default=0)
    budget = InFlight(max(largest, _IN_FLIGHT))
    # free buffers kept for reuse: what the jobs in flight and compute's scratch take, not a
    # copy of the model (half of that made merge-lora 30% slower: buffers re-faulted each time)
    pool = BufferPool(keep_bytes=2 * budget.limit,
                      pinned=device.type == "cuda" and any(p.job.uses(device) for p in pieces))
    stop = threading.Event()
    errors: list[BaseException] = []
    loaded: queue.Queue = queue.Queue(_READ_AHEAD)
    computed: queue.Queue = queue.Queue(_WRITE_BEHIND)
    stats = stats if stats is not None else RunStats(Manifest())

    def read_stage() -> None:
        use_pool(pool)
        try:
            for piece in pieces:
                if not budget.acquire(piece.nbytes, stop):
                    return
                if not _put(loaded, (piece, piece.load()), stop):
                    return
            _put(loaded, _DONE, stop)
        except BaseException as e:  # handed to the main thread, raised there
            errors.append(e)
            stop.set()
        finally:
            use_pool(None)

    def write_stage() -> None:
        hasher = hashlib.sha256()
        use_pool(pool)  # for what written() hooks give back
        try:
            while True:
                item = _get(computed, stop)
                if item is _DONE or item is None:
                    return
                piece, inputs, tensor, digest = item
                out = piece.job.out
                if digest is None:  # hashed here, unless the compute thread had time for it
                    if piece.first:
                        hasher = hashlib.sha256()
                    hasher.update(tensor_bytes(tensor))
                writer.write(out.name, tensor, piece.rows)
                if piece.last:
                    entry = ManifestEntry(safetensors_name(out.dtype), out.shape,
                                          hasher.hexdigest() if digest is None else digest)
                    if checkable(expected, out.name, entry):
                        stats.checked += 1
                        if not expected.check(out.name, entry, where):
                            stats.within_rounding.append(out.name)
                    stats.manifest.add(out.name, entry)
                pool.give([*inputs, tensor])
                del inputs, tensor, item
                budget.release(piece.nbytes)
                if progress is not None:
                    progress.advance(piece.nbytes, int(piece.last))
        except BaseException as e:
            errors.append(e)
            stop.set()
        finally:
            use_pool(None)

    with intra_op_threads(pipeline_threads()):
        _run_stages(read_stage, write_stage, loaded, computed, stop, device, pool)
    if errors:
        raise errors[0]
    return stats


def _run_stages(read_stage: Callable[[], None], write_stage: Callable[[], None],
                loaded: queue.Queue, computed: queue.Queue, stop: threading.Event,
                device: torch.device, pool: BufferPool) -> None:
    """Start the reader and writer threads and compute on this one until all is done."""
    threads = [threading.Thread(target=read_stage, daemon=True, name="weightkit-read"),
               threading.Thread(target=write_stage, daemon=True, name="weightkit-write")]
    for t in threads:
        t.start()
    use_pool(pool)  # compute's scratch buffers come from the pool too
    hashing = _ComputeThreadHashes()
    try:
        while True:
            item = _get(loaded, stop)
            if item is _DONE or item is None:
                break
            piece, inputs = item
            result = piece.run(inputs, device, pool)
            if not _put(computed, (piece, inputs, result, hashing.update(piece, result)), stop):
                break
        _put(computed, _DONE, stop)
    except BaseException:
        stop.set()
        raise
    finally:
        use_pool(None)
        for t in threads:
            t.join()
        pool.close()


class _ComputeThreadHashes:
    """The SHA-256 of tensors that are only copied, taken on the compute thread, which has
    nothing else to do for them (a convert's writer thread spent two thirds of its time hashing
    while the compute thread waited); computed tensors are hashed by the writer thread."""

    def __init__(self) -> None:
        self._hasher = hashlib.sha256()

    def update(self, piece: Piece, result: torch.Tensor) -> str | None:
        """None: the writer hashes this piece; else "" until the tensor's last piece, whose
        digest it returns (pieces come in order, one tensor at a time)."""
        if piece.job.compute is not identity:
            return None
        if piece.first:
            self._hasher = hashlib.sha256()
        self._hasher.update(tensor_bytes(result))
        return self._hasher.hexdigest() if piece.last else ""


def checkable(expected: Manifest | None, name: str, entry: ManifestEntry) -> bool:
    # a tensor asked for in another dtype than the manifest's cannot be compared by hash
    return expected is not None and (name not in expected
                                     or expected.entries[name].dtype == entry.dtype)


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> object:
    while not stop.is_set():
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            continue
    return None


@dataclass(frozen=True)
class Needs:
    """What a run will need, from headers alone: what a dry run reports."""

    bytes: int  # the tensors to write
    disk_free: int  # where the output goes, now
    memory: int  # at most, beyond the program itself
    gpu_memory: int | None  # at most, when the arithmetic runs on a GPU
    largest_tensor: str
    largest_tensor_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class WriteResult:
    """What a checkpoint-writing command did (a dry run: what it would need); what its library
    function returns. `summary()` is the text the command line shows, `to_dict()` the same as
    plain values (for JSON)."""

    command: str  # the title the summary starts with: "recover", "diff --lossless", ...
    out: Path
    format: str  # what the files are: safetensors, bin, lossless-diff
    files: list[str]  # their names in `out`
    tensors: int
    bytes_written: int  # the tensors' bytes (a lossless diff: its files')
    seconds: float
    manifest: Manifest
    dtypes: list[str] = field(default_factory=list)  # of the tensors, as safetensors names them
    tensor_bytes: int = 0  # the tensors' bytes as computed (before a lossless diff's encoding)
    checked: int = 0  # tensors checked against the manifest of `expected_what`
    within_rounding: list[str] = field(default_factory=list)  # of those: the predicted result
    expected_what: str | None = None  # what the tensors were checked against; None: nothing
    check_in_notes: bool = False  # the check is reported in `notes` (not after the totals)
    notes: list[str] = field(default_factory=list)  # for the summary, in the order they came
    log: list[str] = field(default_factory=list)  # what was done before the run (an input
    # found in the Hugging Face cache, fetched into it): a line each, ahead of the summary
    dry_run: bool = False
    needs: Needs | None = None  # a dry run's

    def summary(self) -> str:
        """What the command line prints: the log's lines, then the summary (a dry run: what
        the run would need)."""
        return "\n".join([*self.log, summary_text(self)])

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-able values: what was written, what was checked, the notes."""
        checked: dict[str, Any] = {}
        if self.expected_what is not None:
            checked = {"against": self.expected_what, "tensors": self.checked,
                       "exact": self.checked - len(self.within_rounding),
                       "within_rounding": list(self.within_rounding),
                       "not_checked": self.tensors - self.checked}
        d: dict[str, Any] = {
            "command": self.command, "out": str(self.out), "format": self.format,
            "dry_run": self.dry_run, "files": list(self.files), "tensors": self.tensors,
            "bytes": self.bytes_written, "tensor_bytes": self.tensor_bytes,
            "seconds": self.seconds, "dtypes": list(self.dtypes), "checked": checked,
            "notes": [*self.log, *self.notes]}
        if self.needs is not None:
            d["needs"] = self.needs.to_dict()
        return d


@dataclass(frozen=True)
class _Run:
    """One write_checkpoint call, as _write_into needs it."""

    title: str
    jobs: list[Job]
    plan: list[PlannedTensor]
    inputs: list[Path]
    files: CheckpointFiles
    options: WriteOptions
    device: torch.device
    expected: Manifest | None
    out: Path  # where the folder appears (the tensors' check names it)
    side: Manifest | None


def write_checkpoint(
    out: str | Path,
    jobs: list[Job],
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
    folder = OutputFolder(out, inputs=list(inputs), overwrite=options.overwrite,
                          needed_bytes=needed)
    if options.dry_run:
        largest = max(p.nbytes for j in jobs for p in j.pieces(_PIECE))
        return WriteResult(title, folder.out, files.format, [], len(plan), needed, 0.0,
                           Manifest(), planned_dtypes(plan), needed, notes=list(notes),
                           log=list(log), dry_run=True,
                           needs=needs(folder.out, plan, dev, largest))
    run = _Run(title, jobs, plan, list(inputs), files, options, dev, expected, folder.out,
               side_manifest)
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


def planned_dtypes(plan: list[PlannedTensor]) -> list[str]:
    return sorted({safetensors_name(t.dtype) for t in plan})


def _write_into(tmp: Path, run: _Run) -> WriteResult:
    files, plan, expected = run.files, run.plan, run.expected
    max_bytes = run.options.shard_bytes
    journal = Journal.open(tmp, run_key(run.title, files.key, max_bytes, plan, run.inputs))
    shards = plan_shards(plan, max_bytes)
    names = files.file_names(len(shards))
    done = journal.finished(names, [[t.name for t in s] for s in shards], files.open)
    kept = Manifest({n: e for i in done for n, e in journal.shards[names[i]].items()})
    stats = RunStats(Manifest(dict(kept.entries)))
    side = run.side
    if side is not None:
        for i in done:
            side.entries.update(journal.side.get(names[i], {}))

    def shard_done(i: int) -> None:
        journal.record(names[i], {t.name: stats.manifest.entries[t.name] for t in shards[i]},
                       None if side is None else {t.name: side.entries[t.name]
                                                  for t in shards[i] if t.name in side})

    writer = files.writer(tmp, plan, max_bytes, done, shard_done)
    todo = [j for j in run.jobs if j.out.name not in kept]
    for name, entry in kept.entries.items():  # resumed tensors are checked like the others
        if checkable(expected, name, entry):
            stats.checked += 1
            if not expected.check(name, entry, str(run.out)):
                stats.within_rounding.append(name)
    with ByteProgress(run.title, writer.total_size, len(plan),
                      run.options.show_progress) as progress:
        progress.advance(sum(t.nbytes for t in plan if t.name in kept), len(kept))
        run_jobs(todo, writer, run.device, progress, expected, where=str(run.out), stats=stats)
        written = [p.name for p in writer.close()]
    journal.remove()
    stats.manifest.write(tmp, files.manifest_name)
    notes = ([f"Resumed a killed run: {len(done)} of {len(shards)} shard(s) were already "
              "written and checked."] if done else [])
    return WriteResult(run.title, run.out, files.format, written, len(plan),
                       writer.bytes_written, progress.elapsed, stats.manifest,
                       sorted({e.dtype for e in stats.manifest.entries.values()}),
                       writer.total_size, stats.checked, stats.within_rounding, notes=notes)


def needs(out: Path, plan: list[PlannedTensor], dev: torch.device,
          largest_piece: int | None = None) -> Needs:
    """What a run will need, from headers alone (for a dry run). `largest_piece`: the largest
    part of a tensor held at once, when tensors stream in pieces."""
    largest = max(plan, key=lambda t: t.nbytes)
    held = largest.nbytes if largest_piece is None else largest_piece
    total = sum(t.nbytes for t in plan)
    # outputs in flight, their inputs (up to 1.5x), the buffer pool (2x)
    ram = 9 * min(max(held, _IN_FLIGHT), total) // 2
    return Needs(total, free_bytes(out.parent), ram, 4 * held if dev.type == "cuda" else None,
                 largest.name, largest.nbytes)


def summary_text(r: WriteResult) -> str:
    """The summary line of `r` (without its log)."""
    if r.dry_run:
        assert r.needs is not None
        return preflight(r.command, r.out, r.tensors, r.needs)
    if r.format == LOSSLESS_FORMAT:
        return _lossless_summary(r)
    rate = r.bytes_written / r.seconds if r.seconds > 0 else 0.0
    text = (f"{r.command}: wrote {r.tensors} tensors, {human_bytes(r.bytes_written)} "
            f"({', '.join(r.dtypes)}) in {len(r.files)} file(s) to {r.out} in "
            f"{human_time(r.seconds)} ({human_bytes(rate)}/s).")
    if r.expected_what is not None and not r.check_in_notes:
        text += " " + checked_text(r.checked, r.within_rounding, r.tensors, r.expected_what)
    else:
        text += f" Its tensor manifest is in {MANIFEST_NAME}."
    return " ".join([text, *r.notes])


def _lossless_summary(r: WriteResult) -> str:
    params = sum(math.prod(e.shape) for e in r.manifest.entries.values())
    text = (f"{r.command}: wrote {r.tensors} tensors ({human_bytes(r.tensor_bytes)} of "
            f"{', '.join(r.dtypes)}) as {human_bytes(r.bytes_written)} "
            f"({8 * r.bytes_written / max(params, 1):.2f} bits per parameter) in "
            f"{len(r.files)} file(s) to {r.out} in {human_time(r.seconds)}. Recovering from "
            f"this diff gives all {r.tensors} tensors bit for bit; {TARGET_MANIFEST_NAME} holds "
            "their manifest.")
    return " ".join([text, *r.notes])


def preflight(title: str, out: Path, tensors: int, n: Needs) -> str:
    """A dry run's report of what the run will need."""
    text = (f"{title} (dry run): inputs check out; {tensors} tensors, "
            f"{human_bytes(n.bytes)} to write to {out} "
            f"(disk free: {human_bytes(n.disk_free)}). Largest tensor: {n.largest_tensor} "
            f"({human_bytes(n.largest_tensor_bytes)}); memory needed beyond the program itself: "
            f"at most {human_bytes(n.memory)}")
    if n.gpu_memory is not None:
        text += f"; GPU memory: at most {human_bytes(n.gpu_memory)}"
    return text + ". Nothing was written."


def output_error(e: OSError, out: Path, needed: int) -> OutputError:
    if e.errno == errno.ENOSPC:
        return OutputError(
            f"disk full while writing {out} (the output needs {human_bytes(needed)}; "
            f"{human_bytes(free_bytes(out.parent))} are free now). The partial output was removed.",
            "Free some space or choose another `out`, then run the command again.",
        )
    return OutputError(f"cannot write {out}: {e.strerror or e}",
                       "Check the folder's permissions and the disk, then run again.")


def checked_text(checked: int, within_rounding: list[str], tensors: int, expected_what: str
                 ) -> str:
    """What the check of `tensors` tensors against a manifest found, for the summary."""
    text = (f"Checked against the manifest of {expected_what}: {checked - len(within_rounding)} "
            "tensors match exactly")
    if within_rounding:
        text += (f", {len(within_rounding)} match the within-one-rounding result the diff "
                 "predicted")
    unchecked = tensors - checked
    return text + f"{f', {unchecked} not checked (other dtype)' if unchecked else ''}."
