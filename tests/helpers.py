"""Shared test helpers: real clients against a loopback federation."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

KUBECTL = os.environ.get("KUBECTL", "/usr/bin/kubectl")

T = TypeVar("T")


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def kubectl(kubeconfig: Path, *args: str, timeout: float = 30) -> Completed:
    """Run the real kubectl (client-go) against a kubeconfig, without its on-disk discovery cache."""
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        f"--kubeconfig={kubeconfig}",
        f"--cache-dir={kubeconfig.parent / 'kube-cache'}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return Completed(proc.returncode or 0, out.decode(), err.decode())


async def eventually(
    probe: Callable[[], Awaitable[T | None]] | Callable[[], T | None], *, timeout: float = 10.0
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` (a deadline, not a delay)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)
