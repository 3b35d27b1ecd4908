"""Shared helpers of the deploy/ tests: rendering with kubectl kustomize, and tools that may be missing.

A missing tool (kubectl, promtool, the kubernetes-validate package) skips the tests that need it on a
workstation, with the reason, and fails them in CI (the ``CI`` environment variable is set), so a CI run
can never go green by skipping them.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OBSERVABILITY = DEPLOY / "observability"

#: What an operator can apply with `kubectl apply -k`, and the namespace each one installs into.
TARGETS: dict[str, tuple[Path, str]] = {
    "base": (DEPLOY / "base", "apiproxy"),
    "default": (DEPLOY, "apiproxy"),
    "deckhouse": (DEPLOY / "overlays" / "deckhouse", "d8-istio"),
}

Manifest = dict[str, Any]


def unavailable(what: str) -> None:
    """Skip the calling test, or fail it when running in CI."""
    message = f"{what}; the deploy tests need it"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
    pytest.skip(message)


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (Debian package {package})")
    assert path is not None
    return path


def require_module(name: str, pip_name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        unavailable(f"Python package {pip_name} is not installed (pip install {pip_name})")
        raise


def run(argv: list[str], *, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


_RENDERED: dict[str, list[Manifest]] = {}


def render(target: str) -> list[Manifest]:
    """``kubectl kustomize`` of a target, parsed; rendered once per session."""
    if target not in _RENDERED:
        kubectl = require_tool("kubectl", "kubectl")
        path, _ = TARGETS[target]
        proc = run([kubectl, "kustomize", str(path)])
        assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
        _RENDERED[target] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return _RENDERED[target]


def find(docs: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected exactly one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(params=sorted(TARGETS))
def target(request: pytest.FixtureRequest) -> str:
    """Each renderable target in turn."""
    name: str = request.param
    return name


#: Objects of the metadata exporter are named with this prefix; the proxy's tests look at the proxy's
#: objects only.
EXPORTER = "apiproxy-exporter"


def is_exporter(doc: Manifest) -> bool:
    return bool(doc["metadata"]["name"].startswith(EXPORTER))


@pytest.fixture
def docs(target: str) -> list[Manifest]:
    """The proxy's objects of a target (the exporter's have their own tests)."""
    return [d for d in render(target) if not is_exporter(d)]


@pytest.fixture
def exporter_docs(target: str) -> list[Manifest]:
    return [d for d in render(target) if is_exporter(d)]
