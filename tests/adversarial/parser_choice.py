"""aiohttp has two HTTP parsers (llhttp in C, and a pure-Python one, chosen by ``AIOHTTP_NO_EXTENSIONS``)
which refuse the same bytes with different exceptions: a module about parser refusals runs once with the
parser aiohttp picked and once more, in a subprocess, with the pure-Python one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import http_parser

ROOT = Path(__file__).resolve().parents[2]
#: True in the subprocess run (the pure-Python parser).
PURE_PYTHON = os.environ.get("AIOHTTP_NO_EXTENSIONS") == "1"


def check_the_parser_in_use() -> None:
    """The parser in use is the one the environment asked for."""
    pure = http_parser.HttpRequestParser is http_parser.HttpRequestParserPy
    assert pure == PURE_PYTHON or not hasattr(http_parser, "HttpRequestParserC")


def rerun_with_the_pure_python_parser(test_file: str) -> None:
    """Run ``test_file`` again with the pure-Python parser; every test of it must pass there too."""
    if not hasattr(http_parser, "HttpRequestParserC"):
        pytest.skip("aiohttp's C parser is not built: the run above already used the pure-Python one")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
        cwd=ROOT,
        env={**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-2000:]
