"""Fixtures of the real-apiserver suite (``make test-real``): one real control plane per session, seeded
like the simulator, and a proxy in front of it per test.

Every test under tests/real is marked ``real``; ``make test`` deselects them (``-m "not real"`` in
pyproject), ``make test-real`` selects them. Outside CI a machine without Go or etcd fails here with one
line saying what is missing; it never silently skips.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from apiproxy.demo.sandbox import POLICIES_DIR, Sandbox
from tests.real import gobuild
from tests.real.cluster import RealCluster, StartError
from tests.real.seed import Seeded, seed

SHIPPED_POLICY = POLICIES_DIR / "istio-remote.yaml"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.real)


class Real:
    """The session's control plane, its seed and the proxy's own token (bound to the generated RBAC)."""

    def __init__(self, cluster: RealCluster, seeded: Seeded, proxy_token: str) -> None:
        self.cluster = cluster
        self.seeded = seeded
        self.proxy_token = proxy_token
        self.proxy_user = cluster.service_account_user()


@pytest.fixture(scope="session")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Real]:
    try:
        binary, etcd = gobuild.ensure("kube-apiserver"), gobuild.ensure("etcd")
    except gobuild.BuildError as exc:
        pytest.fail(f"test-real: {exc}", pytrace=False)
    cluster = RealCluster(tmp_path_factory.mktemp("real-cluster"))
    try:
        cluster.start(binary, etcd)
        seeded = seed(cluster)
        token = cluster.install_proxy_identity(SHIPPED_POLICY)
    except StartError as exc:
        cluster.stop()
        pytest.fail(f"test-real: {exc}", pytrace=False)
    try:
        yield Real(cluster, seeded, token)
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def informer_binary() -> Path:
    try:
        return gobuild.ensure("informer")
    except gobuild.BuildError as exc:
        pytest.fail(f"test-real: {exc}", pytrace=False)


def real_sandbox(real: Real, workdir: Path, **settings: Any) -> Sandbox:
    """A proxy (not yet started) in front of the real apiserver, with the shipped policy."""
    box = Sandbox(workdir, upstream=real.cluster.url, upstream_ca=real.cluster.ca_file, settings=settings)
    box.upstream_token_file.write_text(real.proxy_token)
    return box


@pytest.fixture
async def proxy(real: Real, tmp_path: Path) -> AsyncIterator[Sandbox]:
    box = real_sandbox(real, tmp_path / "proxy")
    await box.start()
    try:
        yield box
    finally:
        await box.stop()
