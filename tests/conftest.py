"""Hygiene every suite shares."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_command_logging_outlives_its_test() -> Iterator[None]:
    """A test that runs a command in-process (``apiproxy.cli.main``) configures logging as the command
    does: a plain ``StreamHandler`` on the root logger, writing to that test's captured stderr. Left in
    place, it would outlive the capture, and a later test's background thread (a kopf operator, a
    watch) logging through it would print ``--- Logging error ---`` and a stack into the run's output.
    Only such handlers are removed (pytest's own capture handlers are subclasses, and pytest manages
    them itself), and the root level the command set is put back."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if type(handler) is logging.StreamHandler and handler not in before:
            root.removeHandler(handler)
    root.setLevel(level)
