"""The Secret-watching trust source, driven by a fake watch stream (no cluster needed)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from apiproxy.auth import secretsource
from apiproxy.auth.errors import TrustStoreError
from apiproxy.auth.secretsource import SecretTrustSource
from tests.auth.helpers import ALPHA, BETA, FIXTURES

METADATA = (FIXTURES / "remote-public-metadata.json").read_bytes()


def secret_event(kind: str, content: bytes | None) -> dict[str, Any]:
    data = {} if content is None else {"remote-public-metadata.json": base64.b64encode(content).decode()}
    return {"type": kind, "object": {"metadata": {"name": "s"}, "data": data}}


def only(uuid: str) -> bytes:
    doc = json.loads(METADATA)
    return json.dumps({uuid: doc[uuid]}).encode()


def test_events_drive_snapshots() -> None:
    source = SecretTrustSource("d8-istio", "s", stream_factory=lambda *a: iter(()), names={ALPHA: "alpha"})
    assert not source.synced and source.refresh() is False
    source.handle_event(secret_event("ADDED", METADATA))
    assert source.synced and source.refresh() is True and source.refresh() is False
    assert source.current.clusters[ALPHA].name == "alpha" and len(source.current) == 2

    source.handle_event(secret_event("MODIFIED", only(BETA)))
    assert source.refresh() is True and list(source.current.clusters) == [BETA]
    good = source.current

    source.handle_event(secret_event("MODIFIED", b"{broken"))
    with pytest.raises(TrustStoreError, match="Secret d8-istio/s"):
        source.refresh()
    assert source.refresh() is False and source.current is good

    source.handle_event(secret_event("MODIFIED", None))
    with pytest.raises(TrustStoreError, match="has no key"):
        source.refresh()
    source.handle_event(secret_event("DELETED", None))
    with pytest.raises(TrustStoreError, match="deleted"):
        source.refresh()
    assert source.current is good


def test_background_thread_reconnects() -> None:
    calls: list[int] = []
    done = threading.Event()

    def factory(namespace: str, name: str, stop: threading.Event) -> Iterator[Mapping[str, Any]]:
        calls.append(1)
        assert (namespace, name) == ("d8-istio", "s")
        if len(calls) == 1:
            yield secret_event("ADDED", METADATA)
            raise ConnectionError("watch dropped")
        if len(calls) == 2:
            yield {"type": "ERROR", "object": {"code": 410}}
            return
        yield secret_event("MODIFIED", only(ALPHA))
        done.set()

    source = SecretTrustSource("d8-istio", "s", stream_factory=factory, backoff=(0.001, 0.01))
    source.start()
    try:
        assert source.wait_synced(5)
        assert done.wait(5)
    finally:
        source.stop()
    assert len(calls) >= 3
    assert source.refresh() is True and list(source.current.clusters) == [ALPHA]


def test_the_kubernetes_login_is_kubeconfig_when_named_else_in_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logins: list[str | None] = []

    def from_config(kubeconfig: str | None = None, **_: Any) -> Any:
        logins.append(kubeconfig)
        raise RuntimeError("no cluster here")

    monkeypatch.setattr(secretsource.KubernetesClient, "from_config", staticmethod(from_config))
    monkeypatch.setenv("KUBECONFIG", "/etc/apiproxy/kubeconfig")
    with pytest.raises(RuntimeError):
        next(iter(secretsource.kubernetes_stream()("d8-istio", "s", threading.Event())))
    monkeypatch.delenv("KUBECONFIG")
    with pytest.raises(RuntimeError):
        next(iter(secretsource.kubernetes_stream()("d8-istio", "s", threading.Event())))
    assert logins == ["/etc/apiproxy/kubeconfig", None]
