"""Handing free heap back to the OS once a burst of connections has ended."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from apiproxy.proxy.memory import Glibc, HeapTrimmer, resident_bytes

MiB = 2**20


class FakeAllocator:
    def __init__(self) -> None:
        self.trims = 0

    def trim(self) -> None:
        self.trims += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trimmer() -> tuple[HeapTrimmer, FakeAllocator, Clock]:
    allocator, clock = FakeAllocator(), Clock()
    return HeapTrimmer(allocator, burst=64, interval=30, clock=clock), allocator, clock


def test_steady_load_never_trims() -> None:
    """A trim stalls the event loop for a heap walk: never while the load just goes on."""
    t, allocator, clock = trimmer()
    for connections in [200, 190, 210, 180, 205, 150, 220] * 20:
        clock.now += 1
        t.maybe_trim(connections)
    assert allocator.trims == 0


def test_trims_once_when_a_burst_ends() -> None:
    t, allocator, clock = trimmer()
    for connections in [5, 40, 300, 320, 250, 100, 20, 8, 8, 8]:
        clock.now += 1
        t.maybe_trim(connections)
    assert allocator.trims == 1  # at 100 (<= 320 / 2 and 220 below the peak), and not again after


def test_small_swings_do_not_count_as_bursts() -> None:
    t, allocator, clock = trimmer()
    for connections in [10, 60, 9, 62, 8]:
        clock.now += 1
        t.maybe_trim(connections)
    assert allocator.trims == 0


def test_at_most_once_per_interval() -> None:
    t, allocator, clock = trimmer()
    for connections in [300, 0, 300, 0, 300, 0]:
        clock.now += 5
        t.maybe_trim(connections)
    assert allocator.trims == 1
    clock.now += 30
    t.maybe_trim(0)
    assert allocator.trims == 2


def test_without_glibc_nothing_happens() -> None:
    assert not HeapTrimmer(None).maybe_trim(0)


glibc = Glibc.load()


def burst_then_trim() -> int:
    """Bytes handed back by one trim after a burst: many buffers freed between small live objects (so
    the heap cannot just shrink from the top) stay resident until trimmed. Run in a fresh interpreter,
    so the heap is not whatever earlier tests left of it."""
    assert glibc is not None
    keep: list[bytes] = []
    burst: list[bytearray] = []
    for _ in range(700):
        # 96 KiB: below glibc's smallest mmap threshold, so from the heap, never mmap'd (which would be
        # returned on free); zero-filled, so resident.
        burst.append(bytearray(96 * 1024))
        keep.append(bytes(4096))
    burst.clear()
    before = resident_bytes()
    trimmer = HeapTrimmer(glibc, burst=64, interval=0)
    trimmer.maybe_trim(700)
    assert trimmer.maybe_trim(0)
    freed = before - resident_bytes()
    del keep
    return freed


@pytest.mark.skipif(glibc is None, reason="needs glibc's malloc_trim")
def test_freed_burst_memory_returns_to_the_os() -> None:
    code = "from tests.unit.test_memory import burst_then_trim; print(burst_then_trim())"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 32 * MiB
