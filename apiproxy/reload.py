"""Files the proxy follows while it runs: policy, trust store, certificates, tokens.

Kubernetes updates mounted ConfigMaps and Secrets by swapping a symlink, so a change is detected by
stat-ing the path (following links) on a short interval, then confirmed by content hash. A new version is
validated completely before it replaces the old snapshot; a broken one is refused, logged and counted,
and the last good snapshot keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

log = logging.getLogger("apiproxy.reload")

T = TypeVar("T")

Signature = tuple[int, int, int, int]


def file_signature(path: Path) -> Signature | None:
    """Device, inode, mtime and size, following symlinks (kubelet's ``..data`` swap changes the inode);
    None when the file cannot be stat-ed."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class Refreshable(Protocol):
    name: str

    def refresh(self) -> bool:
        """Look for a change; True when a new snapshot was swapped in. Must not raise."""
        ...


class WatchedFile(Generic[T]):
    """The latest valid snapshot parsed from a file, and why the newest version was refused, if it was."""

    def __init__(self, name: str, path: Path, parse: Callable[[bytes, str], T]) -> None:
        self.name = name
        self.path = path
        self._parse = parse
        self._stat: Signature | None = None
        self._snapshot: T | None = None
        self.sha256 = ""
        self.last_error: str | None = None
        self.loaded_at: float | None = None
        #: Called after each refresh that looked at new content: (name, error or None).
        self.on_result: Callable[[str, str | None], None] | None = None

    @property
    def current(self) -> T:
        if self._snapshot is None:
            raise RuntimeError(f"{self.name} was never loaded: {self.last_error}")
        return self._snapshot

    @property
    def loaded(self) -> bool:
        return self._snapshot is not None

    def load(self) -> T:
        """First load at start-up: a broken file is fatal here, since there is nothing to fall back on."""
        if not self.refresh() and self._snapshot is None:
            raise ValueError(self.last_error or f"cannot load {self.name} from {self.path}")
        return self.current

    def refresh(self) -> bool:
        ident = file_signature(self.path)
        if ident is not None and ident == self._stat:
            return False
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            return self._fail(f"cannot read {self.name} file {self.path}: {exc.strerror}", None)
        self._stat = ident
        digest = hashlib.sha256(data).hexdigest()
        if digest == self.sha256 and self._snapshot is not None:
            return False
        try:
            snapshot = self._parse(data, str(self.path))
        except ValueError as exc:
            return self._fail(f"refused new {self.name} from {self.path}: {exc}", digest)
        self._snapshot = snapshot
        self.sha256 = digest
        self.loaded_at = time.time()
        self.last_error = None
        log.info("loaded %s from %s (sha256 %s)", self.name, self.path, digest[:12])
        if self.on_result:
            self.on_result(self.name, None)
        return True

    def _fail(self, message: str, digest: str | None) -> bool:
        # Report a given broken version once, not on every poll.
        if message != self.last_error:
            log.error("%s%s", message, "; keeping the last good version" if self._snapshot else "")
            if self.on_result:
                self.on_result(self.name, message)
        self.last_error = message
        if digest is None:
            self._stat = None
        return False


class Reloader:
    """Polls every registered source on an interval and runs its callbacks after a swap."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._sources: list[tuple[Refreshable, Callable[[], None] | None]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, source: Refreshable, on_change: Callable[[], None] | None = None) -> None:
        self._sources.append((source, on_change))

    def check_now(self) -> None:
        for source, on_change in self._sources:
            try:
                changed = source.refresh()
            except Exception:
                log.exception("checking %s failed", source.name)
                continue
            if changed and on_change is not None:
                try:
                    on_change()
                except Exception:
                    log.exception("reacting to a change of %s failed", source.name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check_now()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="apiproxy-reloader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class WatchedFiles:
    """Runs ``on_change`` when any of ``paths`` changes (certificates: a cert and its key change together).

    ``on_change`` validates and swaps; if it raises, the error is logged once and the old state stays.
    """

    def __init__(self, name: str, paths: list[Path], on_change: Callable[[], None]) -> None:
        self.name = name
        self.paths = paths
        self._on_change = on_change
        self._seen = self._stat()
        self.last_error: str | None = None
        self.on_result: Callable[[str, str | None], None] | None = None

    def _stat(self) -> tuple[Signature | None, ...]:
        return tuple(file_signature(path) for path in self.paths)

    def refresh(self) -> bool:
        seen = self._stat()
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            self._on_change()
        except (OSError, ValueError) as exc:
            message = f"refused new {self.name}: {exc}"
            if message != self.last_error:
                log.error("%s; keeping the previous one", message)
            self.last_error = message
            if self.on_result:
                self.on_result(self.name, message)
            return False
        self.last_error = None
        log.info("reloaded %s", self.name)
        if self.on_result:
            self.on_result(self.name, None)
        return True
