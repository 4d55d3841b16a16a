"""Reusable byte buffers for tensor data.

A fresh buffer per tensor costs a page fault per 4 KiB on first touch (about a quarter of a
recover's CPU time) and lets heap fragmentation grow with the number of tensors. Inside a
pipeline run, reads land in buffers from the run's pool instead, and the pipeline gives them back
once the tensor that used them is written. Outside a run, reads allocate as usual.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable, Iterable

import torch

from weightkit.io.tensor_info import numel

_local = threading.local()
# Smaller requests are not pooled: malloc serves them from its heap, already faulted in, and
# a pooled tensor-sized buffer lent to a 4 KiB norm would be missing for the next large read.
SMALL = 1 << 20


class BufferPool:
    def __init__(self, keep_bytes: int, pinned: bool = False) -> None:
        self.keep_bytes = keep_bytes  # free buffers beyond this are released
        self.pinned = pinned  # page-locked, for fast asynchronous copies to a GPU
        self._free: list[torch.Tensor] = []
        # address -> size of buffers handed out; not references, so a buffer whose tensor is
        # dropped instead of given back is simply freed
        self._lent: dict[int, int] = {}
        self._lock = threading.Lock()

    def capacity(self, nbytes: int) -> int:
        """The size of the buffer that serves `nbytes`: pinned memory comes from torch's host
        allocator in powers of two, so the pool counts (and reuses) what is really pinned."""
        nbytes = max(nbytes, 1)
        return 1 << (nbytes - 1).bit_length() if self.pinned else nbytes

    def take(self, nbytes: int) -> torch.Tensor:
        """A uint8 tensor of `nbytes` (contents undefined), backed by a pooled buffer."""
        if nbytes < SMALL and not self.pinned:
            return torch.empty(nbytes, dtype=torch.uint8)
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.numel() >= nbytes]
            buf = self._free.pop(min(fits, key=lambda i: self._free[i].numel())) if fits else None
        if buf is None:  # outside the lock: pinning a large buffer takes milliseconds
            buf = self._allocate(self.capacity(nbytes))
        with self._lock:
            self._lent[buf.data_ptr()] = buf.numel()
        return buf[:nbytes]

    def _allocate(self, nbytes: int) -> torch.Tensor:
        buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pinned)
        if not self.pinned:
            _huge_pages(buf)
        return buf

    def give(self, tensors: Iterable[torch.Tensor]) -> None:
        """Return the pooled buffers behind these tensors (others are ignored)."""
        trimmed = False
        with self._lock:
            for t in tensors:
                storage = t.untyped_storage()
                if self._lent.get(storage.data_ptr()) == storage.nbytes():
                    del self._lent[storage.data_ptr()]
                    self._free.append(torch.empty(0, dtype=torch.uint8).set_(storage))
            self._free.sort(key=lambda b: b.numel(), reverse=True)
            while sum(b.numel() for b in self._free) > self.keep_bytes:
                self._free.pop()  # smallest first: large buffers are the costly ones
                trimmed = True
        if trimmed and self.pinned:
            _release_pinned()

    def close(self) -> None:
        """Drop the free buffers (pinned ones go back to the system, not to torch's cache)."""
        with self._lock:
            self._free.clear()
        if self.pinned:
            _release_pinned()

    @property
    def held_bytes(self) -> int:
        """Bytes of the free buffers the pool keeps."""
        with self._lock:
            return sum(b.numel() for b in self._free)


_PAGE, _HUGE, _MADV_HUGEPAGE = 4096, 2 << 20, 14


@functools.cache
def _madvise() -> Callable[..., int] | None:
    try:
        f = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    f.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return f


def _huge_pages(buf: torch.Tensor) -> None:
    """Ask Linux to back a pooled buffer with 2 MiB pages (transparent huge pages are often
    "madvise"-only): its first touch then faults 512 times less, and the pool's buffers are
    most of a run's page faults once reads land in reused memory."""
    madvise = _madvise()
    if madvise is None or buf.numel() < 2 * _HUGE:
        return
    start = -(-buf.data_ptr() // _PAGE) * _PAGE
    madvise(start, (buf.data_ptr() + buf.numel() - start) // _PAGE * _PAGE, _MADV_HUGEPAGE)


def _release_pinned() -> None:
    """torch keeps freed pinned blocks for reuse, forever: hand the unused ones back."""
    empty = getattr(torch._C, "_host_emptyCache", None)
    if empty is not None:
        empty()


def empty_bytes(nbytes: int) -> torch.Tensor:
    """A uint8 buffer from the current thread's pool, or a fresh one outside a pipeline run."""
    pool = getattr(_local, "pool", None)
    return pool.take(nbytes) if pool is not None else torch.empty(nbytes, dtype=torch.uint8)


def empty_tensor(shape: tuple[int, ...] | list[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor, pooled as empty_bytes is (give it back with `release`)."""
    return empty_bytes(numel(shape) * dtype.itemsize).view(dtype).view(tuple(shape))


def use_pool(pool: BufferPool | None) -> None:
    """Make reads on this thread take their buffers from `pool` (None: allocate)."""
    _local.pool = pool


def release(t: torch.Tensor) -> None:
    """Give a tensor's buffer back to the current thread's pool now (when it has one)."""
    pool = getattr(_local, "pool", None)
    if pool is not None:
        pool.give([t])
