"""The Dockerfile, read (no container engine runs in the tests): stages, user, entrypoint, context."""

from __future__ import annotations

import json
import re
import tomllib

from tests.deploy.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def test_multi_stage_on_the_same_slim_python() -> None:
    args = dict(a.split("=", 1) for i, a in instructions() if i == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    froms = [s[0][1] for s in stages()]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]


def test_final_stage_copies_only_the_venv_and_runs_as_65532() -> None:
    final = stages()[-1]
    copies = [a for i, a in final if i in {"COPY", "ADD"}]
    assert copies == ["--from=builder /opt/apiproxy /opt/apiproxy"]
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1] in {"65532", "65532:65532"}
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["apiproxy"]
    assert json.loads(dict(final)["CMD"])[0] == "serve"
    run = " ".join(a for i, a in final if i == "RUN")
    for tool in ("apt-get install", "gcc", "build-essential", "pip install"):
        assert tool not in run, tool
    labels = " ".join(a for i, a in final if i == "LABEL")
    assert "org.opencontainers.image.title" in labels and "org.opencontainers.image.version" in labels


def test_builder_copies_what_the_build_reads() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = " ".join(a for i, a in stages()[0] if i == "COPY").split()
    assert "pyproject.toml" in copied
    assert pyproject["project"]["readme"] in copied
    assert "apiproxy" in copied


def test_dockerignore_keeps_the_context_small_and_clean() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".demo", "benchmarks/results", ".pytest_cache", ".mypy_cache"} <= ignored
    assert {"apiproxy", "pyproject.toml", "README.md"}.isdisjoint(ignored)
