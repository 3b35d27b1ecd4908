"""Give memory back to the operating system after a burst.

glibc's allocator keeps freed memory for reuse instead of returning it. After a burst (remote istiods
restarting at once: hundreds of connections, each with TLS buffers of up to 256 KiB and a body in
flight), the proxy's RSS would stay at its peak long after those connections are gone, which is what a
memory limit and an operator's dashboard see. ``malloc_trim`` returns the free pages, but it walks the
whole heap while the event loop waits (15-20 ms on a heap fragmented by 100,000 free chunks, whether or
not there is anything to return; so does ``mallinfo2``, which could have told how much is free). So it
runs only when a burst of connections has just ended, and not more often than every half minute.

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


class Allocator(Protocol):
    def trim(self) -> None:
        """Return free memory to the operating system."""


class Glibc:
    """glibc's ``malloc_trim``."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._malloc_trim = libc.malloc_trim
        self._malloc_trim.restype = ctypes.c_int
        self._malloc_trim.argtypes = [ctypes.c_size_t]

    @classmethod
    def load(cls) -> Glibc | None:
        try:
            return cls(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"))
        except (OSError, AttributeError):  # no C library found, or not glibc
            return None

    def trim(self) -> None:
        self._malloc_trim(0)


class HeapTrimmer:
    """Trims once a burst of connections has ended: at least ``burst`` fewer open than at the peak since
    the last trim, and at most half that peak; and at most every ``interval`` seconds."""

    def __init__(
        self,
        allocator: Allocator | None,
        *,
        burst: int = 64,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allocator = allocator
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._peak = 0
        self._next = 0.0

    def maybe_trim(self, connections: int) -> bool:
        """Called periodically with the connections open now; True when a trim ran."""
        if self.allocator is None:
            return False
        self._peak = max(self._peak, connections)
        if self._peak - connections < self.burst or connections > self._peak // 2:
            return False
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.interval
        self._peak = connections
        rss_before, started = resident_bytes(), time.perf_counter()
        self.allocator.trim()
        log.debug(
            "a burst of connections ended: returned %.1f MiB to the OS in %.1f ms",
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
