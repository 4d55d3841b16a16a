"""The buffer pool: reuse, its bound, pinned sizes as pinned, allocation outside its lock."""

from __future__ import annotations

import torch

from weightkit.io.buffers import SMALL, BufferPool

MIB = 2**20


def test_buffers_are_reused_and_the_pool_keeps_at_most_its_bound():
    pool = BufferPool(keep_bytes=40 * MIB)
    a, b = pool.take(16 * MIB), pool.take(32 * MIB)
    pa = a.data_ptr()
    pool.give([a, b])
    assert pool.held_bytes == 32 * MIB  # the 16 MiB buffer went over the bound: released
    c = pool.take(10 * MIB)  # served by the 32 MiB buffer, not a fresh one
    assert c.numel() == 10 * MIB and c.untyped_storage().nbytes() == 32 * MIB
    assert c.data_ptr() != pa
    pool.give([c, c])  # given twice: kept once
    assert pool.held_bytes == 32 * MIB


def test_small_requests_are_not_pooled():
    pool = BufferPool(keep_bytes=64 * MIB)
    small = pool.take(SMALL - 1)
    pool.give([small])
    assert pool.held_bytes == 0


def test_pinned_buffers_are_counted_at_the_size_torch_pins():
    """torch's host allocator pins a power of two: 17 MiB pins 32 MiB, and the pool's bound
    must count what is pinned (a 1.09 GB tensor took 2 GiB unseen)."""
    pool = BufferPool(keep_bytes=64 * MIB, pinned=True)
    assert pool.capacity(17 * MIB) == 32 * MIB
    assert pool.capacity(16 * MIB) == 16 * MIB
    assert BufferPool(keep_bytes=0).capacity(17 * MIB) == 17 * MIB


def test_allocation_happens_outside_the_lock(monkeypatch):
    pool = BufferPool(keep_bytes=64 * MIB)
    held = []

    def allocate(nbytes: int) -> torch.Tensor:
        held.append(pool._lock.locked())
        return torch.empty(nbytes, dtype=torch.uint8)

    monkeypatch.setattr(pool, "_allocate", allocate)
    pool.give([pool.take(2 * MIB)])
    assert held == [False]


def test_large_pooled_buffers_fault_in_huge_pages():
    """Where Linux offers transparent huge pages, a 64 MiB pooled buffer is first touched with
    about 32 page faults, not 16384 (a run's faults were mostly its pool filling up)."""
    import resource
    from pathlib import Path

    import pytest

    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.is_file() or "[never]" in thp.read_text():
        pytest.skip("no transparent huge pages here")
    pool = BufferPool(keep_bytes=128 * MIB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    pool.take(64 * MIB).fill_(1)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 64 * MIB // 4096 // 8, faults
