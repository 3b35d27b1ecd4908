"""Give memory back to the operating system after a burst.

glibc's allocator keeps freed memory for reuse instead of returning it. After a burst (remote istiods
restarting at once: hundreds of connections, each with TLS buffers of up to 256 KiB and a body in
flight), the proxy's RSS would stay at its peak long after those connections are gone, which is what a
memory limit and an operator's dashboard see. ``malloc_trim`` returns the free pages; it costs a walk
of the heap (about 20 ms to return 220 MB, under 1 ms when there is little to return), so it runs only
when the allocator holds a lot of free memory, and not more often than every half minute.

Elsewhere than glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("apiproxy.memory")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


class Allocator(Protocol):
    def free_bytes(self) -> int:
        """Bytes the allocator holds free (and could return)."""

    def trim(self) -> None:
        """Return free memory to the operating system."""


class Glibc:
    """glibc's ``mallinfo2`` and ``malloc_trim`` (glibc ≥ 2.33)."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._mallinfo2 = libc.mallinfo2
        self._mallinfo2.restype = _MallInfo2
        self._mallinfo2.argtypes = []
        self._malloc_trim = libc.malloc_trim
        self._malloc_trim.restype = ctypes.c_int
        self._malloc_trim.argtypes = [ctypes.c_size_t]

    @classmethod
    def load(cls) -> Glibc | None:
        try:
            return cls(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"))
        except (OSError, AttributeError):  # not glibc, or too old for mallinfo2
            return None

    def free_bytes(self) -> int:
        return int(self._mallinfo2().fordblks)

    def trim(self) -> None:
        self._malloc_trim(0)


class HeapTrimmer:
    """Calls ``trim`` when more than ``threshold`` bytes sit free, at most every ``interval`` seconds."""

    def __init__(
        self,
        allocator: Allocator | None,
        *,
        threshold: int = 64 * 1024 * 1024,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allocator = allocator
        self.threshold = threshold
        self.interval = interval
        self._clock = clock
        self._next = 0.0

    def maybe_trim(self) -> bool:
        """Trim if it is worth it; True when a trim ran."""
        if self.allocator is None:
            return False
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.interval
        if self.allocator.free_bytes() < self.threshold:
            return False
        rss_before, started = resident_bytes(), time.perf_counter()
        self.allocator.trim()
        log.debug(
            "returned %.1f MiB to the OS in %.1f ms",
            (rss_before - resident_bytes()) / 2**20,
            (time.perf_counter() - started) * 1000,
        )
        return True


def resident_bytes() -> int:
    """This process's resident set size (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
