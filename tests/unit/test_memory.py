"""Handing free heap back to the OS after a burst."""

from __future__ import annotations

import pytest

from apiproxy.memory import Glibc, HeapTrimmer, resident_bytes

MiB = 2**20


class FakeAllocator:
    def __init__(self, free: int) -> None:
        self.free = free
        self.trims = 0

    def free_bytes(self) -> int:
        return self.free

    def trim(self) -> None:
        self.trims += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_trims_only_when_much_is_free() -> None:
    allocator, clock = FakeAllocator(free=10 * MiB), Clock()
    trimmer = HeapTrimmer(allocator, threshold=64 * MiB, interval=30, clock=clock)
    assert not trimmer.maybe_trim()
    allocator.free = 200 * MiB
    clock.now += 30
    assert trimmer.maybe_trim()
    assert allocator.trims == 1


def test_trims_at_most_once_per_interval() -> None:
    """A trim walks the whole heap: never on every tick, however much stays free."""
    allocator, clock = FakeAllocator(free=500 * MiB), Clock()
    trimmer = HeapTrimmer(allocator, threshold=64 * MiB, interval=30, clock=clock)
    assert trimmer.maybe_trim()
    for _ in range(29):
        clock.now += 1
        assert not trimmer.maybe_trim()
    clock.now += 1
    assert trimmer.maybe_trim()
    assert allocator.trims == 2


def test_without_glibc_nothing_happens() -> None:
    assert not HeapTrimmer(None).maybe_trim()


glibc = Glibc.load()


@pytest.mark.skipif(glibc is None, reason="needs glibc's mallinfo2 and malloc_trim")
def test_freed_burst_memory_returns_to_the_os() -> None:
    """What the proxy sees after a burst: many large buffers freed between small live objects (so the
    heap cannot just shrink from the top) stay resident until trimmed."""
    assert glibc is not None
    keep: list[bytes] = []
    burst: list[bytearray] = []
    for _ in range(700):
        # 96 KiB: below glibc's smallest mmap threshold, so from the heap, never mmap'd (which would be
        # returned on free); zero-filled, so resident.
        burst.append(bytearray(96 * 1024))
        keep.append(bytes(4096))
    burst.clear()
    free = glibc.free_bytes()
    assert free >= 32 * MiB, free
    before = resident_bytes()
    assert HeapTrimmer(glibc, threshold=32 * MiB, interval=0).maybe_trim()
    assert before - resident_bytes() >= 32 * MiB
    del keep
