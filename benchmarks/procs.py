"""Processes for benchmarks: start them pinned, wait until ready, read their memory and CPU, stop them."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> tuple[int, int]:
    """Raise this process's soft limit on open files to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` figure in KiB (VmRSS: now, VmHWM: peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: ``echo 5 > /proc/PID/clear_refs``)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _stat(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name: index 0 is field 3 (state), index n-3 is field n."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren...), by each process's parent pid."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return sorted(found)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants: a supervisor and its workers, nginx's master and its workers."""
    return [pid, *descendants(pid)]


def cpu_seconds_of(pids: Iterable[int]) -> dict[int, float]:
    """User + system CPU seconds of each process still alive (the vanished are left out)."""
    out: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            out[pid] = cpu_seconds(pid)
    return out


def cpu_seconds_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two ``cpu_seconds_of`` readings, over the processes in both."""
    return sum(after[pid] - before[pid] for pid in before if pid in after)


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot): tells a process from a later one with its pid."""
    try:
        return int(_stat(pid)[19])
    except (OSError, IndexError, ValueError):
        return None


def spawn(
    args: Sequence[str],
    log: Path,
    *,
    cpus: set[int] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process with its output in ``log``, pinned to ``cpus`` (None: anywhere)."""
    out = log.open("ab")

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    return subprocess.Popen(
        list(args),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=pin,  # only sched_setaffinity
        env={**os.environ, **(env or {})},
    )


def wait_ready(
    url: str,
    ctx: ssl.SSLContext | None,
    proc: subprocess.Popen[bytes],
    timeout: float = 30,
    headers: dict[str, str] | None = None,
    interval: float = 0.005,
) -> float:
    """Poll ``url`` until it answers 200; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            req = urllib.request.Request(url, headers=headers or {})  # noqa: S310
            with urllib.request.urlopen(req, context=ctx, timeout=1) as resp:  # noqa: S310
                if resp.status == 200:
                    return time.monotonic() - start
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(interval)
    raise TimeoutError(f"{url} not ready within {timeout}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_tree(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """``stop`` the process, then kill whatever of its descendants outlived it (workers of a supervisor
    that had to be killed): only those processes, recognised by pid and start time."""
    below = [(pid, start_ticks(pid)) for pid in descendants(proc.pid)] if proc.poll() is None else []
    stop(proc, timeout)
    for pid, started in below:
        if started is not None and start_ticks(pid) == started:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def listening_sockets(port: int) -> int:
    """How many sockets listen on ``port`` (several with SO_REUSEPORT: one per worker)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                    count += 1
    return count
