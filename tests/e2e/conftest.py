from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apiproxy.sandbox import Sandbox


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    box = Sandbox(tmp_path)
    await box.start()
    try:
        yield box
    finally:
        await box.stop()
