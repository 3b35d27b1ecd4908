"""Which tour ``apiproxy demo`` runs; a tour that fails to start is one line on stderr and exit 1."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from apiproxy import logs


def run_demo(*, once: bool, workdir: str, proxy_only: bool = False) -> int:
    """The federation tour of two clusters, or with ``proxy_only`` the single-proxy tour."""
    from apiproxy.demo.federation import federation_tour
    from apiproxy.demo.proxy_tour import tour

    logs.configure("warning")
    run = tour if proxy_only else federation_tour
    try:
        return asyncio.run(run(Path(workdir).resolve(), once))
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        print(f"demo failed: {exc!r}", file=sys.stderr)
        return 1
