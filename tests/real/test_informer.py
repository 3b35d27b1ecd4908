"""A client-go informer client (tests/real/informer, built from the Go module proxy) runs istiod's
informers through the proxy in front of the real apiserver: protobuf, QPS 80/burst 160, pods without
Failed ones, the mesh config map by field selector, CRDs metadata-only. Every informer must sync and see a
change made directly on the apiserver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from apiproxy.demo.sandbox import Sandbox
from tests.helpers import eventually
from tests.real.conftest import Real, real_sandbox

#: What the shipped policy lets istiod read. The concealed ones (secrets, cluster-wide configmaps) are
#: in ISTIOD_CONCEALED.
ISTIOD_ALLOWED = ("namespaces", "pods", "services", "nodes", "endpointslices", "meshconfig", "crds")
ISTIOD_CONCEALED = ("secrets", "configmaps")


@dataclass
class InformerRun:
    proc: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    async def pump(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.events.append(json.loads(line))
            self._new.set()

    async def wait_for(self, predicate: Any, timeout: float = 60) -> dict[str, Any]:
        """The first event (seen so far or to come) matching ``predicate``; fails after ``timeout``."""

        async def scan() -> dict[str, Any]:
            index = 0
            while True:
                while index < len(self.events):
                    event = self.events[index]
                    index += 1
                    if predicate(event):
                        return event
                if self.proc.returncode is not None and index >= len(self.events):
                    raise AssertionError(f"informer exited {self.proc.returncode}: {self.events[-5:]}")
                self._new.clear()
                await self._new.wait()

        return await asyncio.wait_for(scan(), timeout)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]


@contextlib.asynccontextmanager
async def run_informer(
    binary: Path, kubeconfig: Path, informers: tuple[str, ...]
) -> AsyncIterator[InformerRun]:
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--informers={','.join(informers)}",
        "--sync-timeout=60s",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=dict(os.environ),
    )
    run = InformerRun(proc)
    pump = asyncio.create_task(run.pump())
    try:
        yield run
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await asyncio.wait_for(pump, 10)


def direct_count(real: Real, target: str) -> int:
    status, _, body = real.cluster.request("GET", target, headers={"Accept": "application/json"})
    assert status == 200
    return len(json.loads(body)["items"])


async def test_istiod_informers_sync_through_the_proxy_and_see_changes(
    real: Real, proxy: Sandbox, informer_binary: Path
) -> None:
    async with run_informer(informer_binary, proxy.kubeconfig(), ISTIOD_ALLOWED) as run:
        await run.wait_for(lambda e: e["event"] == "all_synced")
        synced = {e["informer"]: e["items"] for e in run.of("synced")}
        assert set(synced) == set(ISTIOD_ALLOWED)
        assert synced["pods"] == direct_count(real, "/api/v1/pods?fieldSelector=status.phase!%3DFailed")
        assert synced["services"] == direct_count(real, "/api/v1/services")
        assert synced["endpointslices"] == direct_count(real, "/apis/discovery.k8s.io/v1/endpointslices")
        assert synced["meshconfig"] == 1
        name = f"informed-{uuid.uuid4().hex[:8]}"
        real.cluster.kubectl("create", "service", "clusterip", name, "-n", "accounts", "--tcp=80:80")
        try:
            await run.wait_for(lambda e: e["event"] == "add" and e.get("name") == name)
        finally:
            real.cluster.kubectl("delete", "service", name, "-n", "accounts", "--ignore-not-found")
        assert not run.of("watch_error"), run.of("watch_error")
    assert {r["decision"] for r in proxy.audit_records()} == {"allow"}


@pytest.mark.parametrize("max_watch_timeout", [2.0])
async def test_concealed_secrets_and_configmaps_sync_empty_and_stay_synced_across_watch_timeouts(
    real: Real, tmp_path: Path, informer_binary: Path, max_watch_timeout: float
) -> None:
    """istiod's gateway-credential informer (all Secrets) and 1.26's all-ConfigMaps informer: concealed,
    they sync with zero items; the proxy caps each watch at a couple of seconds so the reflectors
    re-watch several times, and none of that is an error."""
    box = real_sandbox(real, tmp_path / "proxy", max_watch_timeout=max_watch_timeout)
    await box.start()
    try:
        async with run_informer(informer_binary, box.kubeconfig(), ISTIOD_CONCEALED) as run:
            await run.wait_for(lambda e: e["event"] == "all_synced")
            assert {e["informer"]: e["items"] for e in run.of("synced")} == {"secrets": 0, "configmaps": 0}

            def secret_watches() -> int:
                records = box.audit_records()
                return sum(1 for r in records if r.get("verb") == "watch" and r.get("resource") == "secrets")

            await eventually(lambda: secret_watches() >= 3, timeout=60)
            assert not run.of("watch_error"), run.of("watch_error")
        # A re-watch may be in flight when the informer is stopped: that one ends as "the client went away".
        records = [
            r for r in box.audit_records() if r.get("resource") and r["reason"] != "the client went away"
        ]
        assert {(r["resource"], r["decision"], r["status"]) for r in records} == {
            ("secrets", "conceal", 200),
            ("configmaps", "conceal", 200),
        }
        for resource in ISTIOD_CONCEALED:  # synced once (a streaming list, or one LIST), never relisted
            assert len([r for r in records if r["resource"] == resource and r["verb"] == "list"]) <= 1
        assert not [e for e in real.cluster.audit_events_by(real.proxy_user) if _secretish(e)]
    finally:
        await box.stop()


def _secretish(event: dict[str, Any]) -> bool:
    ref = event.get("objectRef", {})
    return ref.get("resource") == "secrets" or (
        ref.get("resource") == "configmaps" and ref.get("namespace") != "istio-system"
    )
