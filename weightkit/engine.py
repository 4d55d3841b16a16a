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
import functools
import hashlib
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeGuard, TypeVar

import torch

from weightkit.dtypes import NON_FINITE_BITS, count_non_finite, safetensors_name
from weightkit.errors import InputError
from weightkit.io.buffers import BufferPool, use_pool
from weightkit.io.raw_bytes import tensor_bytes
from weightkit.io.tensor_info import PIECE_BYTES, TensorInfo, numel
from weightkit.kernels import (
    canonicalize_nans,
    intra_op_threads,
    pipeline_threads,
    round_into,
    scratch,
)
from weightkit.manifest import Manifest, ManifestEntry
from weightkit.progress import ByteProgress


class TensorWriter(Protocol):
    """Where run_jobs writes each result: a tensor, or rows [start, stop) of one, in order."""

    def write(
        self, name: str, tensor: torch.Tensor, rows: tuple[int, int] | None = None
    ) -> None: ...


_READ_AHEAD = 2
_WRITE_BEHIND = 2
# Output bytes that may be in flight (loaded, not yet written) at once: the queues alone would
# let several large tensors pile up, so peak memory would grow with the tensors' size. Four
# pieces: one being read, one computed, one written, one spare (more gained nothing measured).
_IN_FLIGHT = 128 * 2**20
_PIECE = PIECE_BYTES


class _Done:
    """The end marker a stage puts on its queue after its last item."""


_DONE = _Done()


@dataclass
class Job:
    """One output tensor: how to load its inputs (on the CPU) and how to compute it.

    With `load_rows`, compute works row by row: `load_rows(start, stop)` gives the inputs of the
    output's rows [start, stop), and a large tensor streams in pieces of bounded size, so memory
    does not follow the model's largest tensor. Pieces start at multiples of `row_multiple`.
    """

    out: TensorInfo
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
        if self.load_rows is None or not self.out.shape or self.out.nbytes <= max_bytes:
            return [Piece(self, None)]
        return [Piece(self, rows) for rows in self.out.row_ranges(max_bytes, self.row_multiple)]


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
        return numel(self.shape) * self.job.out.dtype.itemsize

    @property
    def first(self) -> bool:
        return self.rows is None or self.rows[0] == 0

    @property
    def last(self) -> bool:
        return self.rows is None or self.rows[1] == self.job.out.shape[0]

    def load(self) -> tuple[torch.Tensor, ...]:
        if self.rows is None:
            return self.job.load()
        load_rows = self.job.load_rows
        if load_rows is None:  # Job.pieces cuts only a job with load_rows
            raise RuntimeError(f"{self.job.out.name}: rows {self.rows} of a job loaded whole")
        return load_rows(*self.rows)

    def run(
        self, inputs: tuple[torch.Tensor, ...], device: torch.device, pool: BufferPool
    ) -> torch.Tensor:
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
        if (
            job.check_finite
            and job.compute is not identity
            and result.is_floating_point()
            and not _all_finite_fast(result)
        ):
            refuse_new_non_finite(job.out.name, result, inputs)
            canonicalize_nans(result)  # NaN signs and payloads differ between CPUs and GPUs
        return result

    def _compute(
        self, inputs: tuple[torch.Tensor, ...], device: torch.device, pool: BufferPool
    ) -> torch.Tensor:
        job = self.job
        moved = (
            inputs
            if device.type == "cpu"
            else tuple(x.to(device, non_blocking=True) for x in inputs)
        )
        computed = job.compute(*moved)
        if computed.device.type != "cpu":
            computed = computed.to(job.out.dtype)  # round there: fewer bytes come back
        if tuple(computed.shape) != self.shape:
            raise RuntimeError(
                f"{job.out.name}: computed {tuple(computed.shape)}, planned {self.shape}"
            )
        if computed.dtype == job.out.dtype and computed.device.type == "cpu":
            return computed
        result = pool.take(self.nbytes).view(job.out.dtype).view(self.shape)
        # synchronous from a device: the writer may read it at once
        round_into(
            result, computed, widen_first=_halves(computed, result) and _all_finite_fast(computed)
        )
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


def refuse_new_non_finite(
    name: str, result: torch.Tensor, inputs: tuple[torch.Tensor, ...]
) -> None:
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
            part = flat[start : start + _CHECK_BLOCK]
            torch.bitwise_and(part, mask, out=bits[: part.numel()])
            if int(bits[: part.numel()].max()) == mask:
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
    writer: TensorWriter,
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
    pool = BufferPool(
        keep_bytes=2 * budget.limit,
        pinned=device.type == "cuda" and any(p.job.uses(device) for p in pieces),
    )
    stop = threading.Event()
    errors: list[BaseException] = []
    loaded: queue.Queue[_Loaded | _Done] = queue.Queue(_READ_AHEAD)
    computed: queue.Queue[_Computed | _Done] = queue.Queue(_WRITE_BEHIND)
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
                if item is None or isinstance(item, _Done):
                    return
                piece, inputs, tensor, digest = item
                out = piece.job.out
                if digest is None:  # hashed here, unless the compute thread had time for it
                    if piece.first:
                        hasher = hashlib.sha256()
                    hasher.update(tensor_bytes(tensor))
                writer.write(out.name, tensor, piece.rows)
                if piece.last:
                    entry = ManifestEntry(
                        safetensors_name(out.dtype),
                        out.shape,
                        hasher.hexdigest() if digest is None else digest,
                    )
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


def _run_stages(
    read_stage: Callable[[], None],
    write_stage: Callable[[], None],
    loaded: queue.Queue[_Loaded | _Done],
    computed: queue.Queue[_Computed | _Done],
    stop: threading.Event,
    device: torch.device,
    pool: BufferPool,
) -> None:
    """Start the reader and writer threads and compute on this one until all is done."""
    threads = [
        threading.Thread(target=read_stage, daemon=True, name="weightkit-read"),
        threading.Thread(target=write_stage, daemon=True, name="weightkit-write"),
    ]
    for t in threads:
        t.start()
    use_pool(pool)  # compute's scratch buffers come from the pool too
    hashing = _ComputeThreadHashes()
    try:
        while True:
            item = _get(loaded, stop)
            if item is None or isinstance(item, _Done):
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


def checkable(expected: Manifest | None, name: str, entry: ManifestEntry) -> TypeGuard[Manifest]:
    """Whether `entry` is to be checked against `expected` (then not None)."""
    # a tensor asked for in another dtype than the manifest's cannot be compared by hash
    return expected is not None and (
        name not in expected or expected.entries[name].dtype == entry.dtype
    )


# what the reader gives the compute thread: a piece and its inputs; what the compute thread
# gives the writer: with the result and its digest (None: the writer hashes it, see
# _ComputeThreadHashes)
_Loaded = tuple[Piece, tuple[torch.Tensor, ...]]
_Computed = tuple[Piece, tuple[torch.Tensor, ...], torch.Tensor, str | None]
_Item = TypeVar("_Item")


def _put(q: queue.Queue[_Item], item: _Item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue[_Item], stop: threading.Event) -> _Item | None:
    """The next item, or None once the run is stopped."""
    while not stop.is_set():
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            continue
    return None


def memory_needs(jobs: Sequence[Job]) -> tuple[int, int]:
    """(host, device) bytes a run of `jobs` holds at most beyond the program itself, from the
    plan alone (a dry run reports them)."""
    held = max(p.nbytes for j in jobs for p in j.pieces(_PIECE))  # at once, of one tensor
    total = sum(j.out.nbytes for j in jobs)
    # outputs in flight, their inputs (up to 1.5x), the buffer pool (2x)
    return 9 * min(max(held, _IN_FLIGHT), total) // 2, 4 * held
