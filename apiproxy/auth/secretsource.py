"""Trust store read straight from the Deckhouse Secret (``--trust-secret NAMESPACE/NAME``), no volume.

A :class:`~apiproxy.kubewatch.WatchLoop` thread lists then watches the one Secret
(``field_selector=metadata.name=NAME``) and reconnects with backoff; the listed object and each
ADDED/MODIFIED event are parsed into a :class:`TrustStore`. The server polls it exactly like
:class:`~apiproxy.auth.truststore.TrustSource`: ``refresh()`` returns True once per new snapshot and
raises (once) the error of a broken Secret, keeping the previous snapshot. A deleted or absent Secret
keeps the last good snapshot and is reported as an error.

The Kubernetes API is reached only through ``stream_factory``; the default uses the ``kubernetes``
client (``$KUBECONFIG`` when set, else the in-cluster service account), tests pass a fake.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from apiproxy.auth.errors import TrustStoreError
from apiproxy.auth.truststore import TrustStore, build_trust_store
from apiproxy.kubewatch import KubernetesClient, WatchLoop, WatchTarget, list_then_watch

log = logging.getLogger(__name__)

DATA_KEY: Final = "remote-public-metadata.json"
#: ``stream_factory(namespace, name, stop)`` yields watch events: ``{"type": ..., "object": Secret}``.
StreamFactory = Callable[[str, str, threading.Event], Iterable[Mapping[str, Any]]]


def kubernetes_stream(api: Any = None) -> StreamFactory:
    """A ``StreamFactory`` over the ``kubernetes`` client: :func:`~apiproxy.kubewatch.list_then_watch` of
    the one Secret. Logged in with ``api`` when given, else with the kubeconfig ``$KUBECONFIG`` names (as
    kubectl would: a proxy run outside a pod), else with the in-cluster service account."""

    clients: list[KubernetesClient] = []  # made on first use (in the watch thread), then reused

    def factory(namespace: str, name: str, stop: threading.Event) -> Iterator[Mapping[str, Any]]:
        if not clients:
            clients.append(
                KubernetesClient.from_config(os.environ.get("KUBECONFIG") or None)
                if api is None
                else KubernetesClient(api.api_client)
            )
        yield from list_then_watch(clients[0], WatchTarget("secrets", namespace, name=name), stop)

    return factory


def _until_error(events: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for event in events:
        if event.get("type") == "ERROR":
            return  # e.g. 410 Gone: start a fresh watch, which lists first
        yield event


def _name_of(obj: Any) -> str | None:
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else getattr(obj, "metadata", None)
    name = metadata.get("name") if isinstance(metadata, Mapping) else getattr(metadata, "name", None)
    return name if isinstance(name, str) else None


def _secret_data(obj: Any) -> Mapping[str, str] | None:
    data = obj.get("data") if isinstance(obj, Mapping) else getattr(obj, "data", None)
    return data if isinstance(data, Mapping) else None


class SecretTrustSource:
    """The current :class:`TrustStore`, kept up to date from a watched Secret by a background thread."""

    def __init__(
        self,
        namespace: str,
        name: str,
        *,
        names: Mapping[str, str] | None = None,
        key: str = DATA_KEY,
        stream_factory: StreamFactory | None = None,
        backoff: tuple[float, float] = (1.0, 30.0),
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.key = key
        self.names = dict(names or {})
        self._factory = stream_factory or kubernetes_stream()
        self._lock = threading.Lock()
        self._current = TrustStore()
        self._pending_change = False
        self._pending_error: TrustStoreError | None = None
        self._synced = threading.Event()
        self._loop = WatchLoop(
            f"Secret {namespace}/{name}",
            lambda stop: _until_error(self._factory(self.namespace, self.name, stop)),
            self.handle_event,
            backoff=backoff,
        )
        self.last_error: TrustStoreError | None = None

    @property
    def current(self) -> TrustStore:
        return self._current

    @property
    def synced(self) -> bool:
        """True once a first good snapshot arrived (gate readiness on it)."""
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._loop.stop(timeout)

    def refresh(self) -> bool:
        """True once after each new snapshot; raises a pending :class:`TrustStoreError` once."""
        with self._lock:
            error, self._pending_error = self._pending_error, None
            changed, self._pending_change = self._pending_change, False
        if error is not None:
            raise error
        return changed

    # -- background thread --------------------------------------------------------------------------

    def handle_event(self, event: Mapping[str, Any]) -> None:
        """Apply one watch event (public for tests and for callers driving their own watch)."""
        kind = event.get("type")
        where = f"Secret {self.namespace}/{self.name}"
        if kind == "RESET":  # a fresh list: the Secret, or nothing
            named = [o for o in event.get("objects") or () if _name_of(o) == self.name]
            if not named:
                self._set_error(TrustStoreError(f"{where} does not exist; keeping the last trust store"))
                return
            event = {"type": "ADDED", "object": named[0]}
            kind = "ADDED"
        if kind == "DELETED":
            self._set_error(TrustStoreError(f"{where} was deleted; keeping the last trust store"))
            return
        if kind not in ("ADDED", "MODIFIED"):
            return
        data = _secret_data(event.get("object"))
        encoded = data.get(self.key) if data is not None else None
        if encoded is None:
            self._set_error(TrustStoreError(f"{where} has no key {self.key!r}"))
            return
        try:
            raw = base64.b64decode(encoded, validate=True)
            store = build_trust_store(raw, None, self.names)
        except binascii.Error:
            self._set_error(TrustStoreError(f"{where} key {self.key!r} is not base64"))
            return
        except TrustStoreError as exc:
            self._set_error(TrustStoreError(f"{where}: {exc}"))
            return
        with self._lock:
            self.last_error = None
            if store.sha256 != self._current.sha256 or not self._synced.is_set():
                self._current = store
                self._pending_change = True
        self._synced.set()

    def _set_error(self, error: TrustStoreError) -> None:
        with self._lock:
            self._pending_error = error
            self.last_error = error
