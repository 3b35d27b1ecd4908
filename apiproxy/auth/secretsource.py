"""Trust store read straight from the Deckhouse Secret (``--trust-secret NAMESPACE/NAME``), no volume.

A daemon thread watches the one Secret (``list_namespaced_secret`` with
``field_selector=metadata.name=NAME``) and reconnects with backoff; each ADDED/MODIFIED event is parsed
into a :class:`TrustStore`. The server polls it exactly like :class:`~apiproxy.auth.truststore.TrustSource`:
``refresh()`` returns True once per new snapshot and raises (once) the error of a broken Secret, keeping
the previous snapshot. A deleted Secret keeps the last good snapshot and is reported as an error.

The Kubernetes API is reached only through ``stream_factory``; the default uses the ``kubernetes``
client, tests pass a fake.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from apiproxy.auth.errors import TrustStoreError
from apiproxy.auth.truststore import TrustStore, build_trust_store

log = logging.getLogger(__name__)

DATA_KEY: Final = "remote-public-metadata.json"
#: ``stream_factory(namespace, name, stop)`` yields watch events: ``{"type": ..., "object": Secret}``.
StreamFactory = Callable[[str, str, threading.Event], Iterable[Mapping[str, Any]]]


def kubernetes_stream(api: Any = None, *, timeout_seconds: int = 300) -> StreamFactory:
    """A ``StreamFactory`` over the ``kubernetes`` client (in-cluster config unless ``api`` is given)."""

    def factory(namespace: str, name: str, stop: threading.Event) -> Iterator[Mapping[str, Any]]:
        # Imported lazily and untyped: only this optional feature needs the kubernetes client.
        config: Any = importlib.import_module("kubernetes.config")
        client: Any = importlib.import_module("kubernetes.client")
        watch: Any = importlib.import_module("kubernetes.watch")
        core = api
        if core is None:
            config.load_incluster_config()
            core = client.CoreV1Api()
        w = watch.Watch()
        try:
            for event in w.stream(
                core.list_namespaced_secret,
                namespace,
                field_selector=f"metadata.name={name}",
                timeout_seconds=timeout_seconds,
            ):
                if stop.is_set():
                    break
                yield event
        finally:
            w.stop()

    return factory


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
        self._backoff = backoff
        self._lock = threading.Lock()
        self._current = TrustStore()
        self._pending_change = False
        self._pending_error: TrustStoreError | None = None
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
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
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"trust-secret-{self.namespace}/{self.name}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

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

    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            try:
                for event in self._factory(self.namespace, self.name, self._stop):
                    if event.get("type") == "ERROR":
                        break  # e.g. 410 Gone: start a fresh watch, which lists first
                    self.handle_event(event)
                    delay = self._backoff[0]
                    if self._stop.is_set():
                        return
            except Exception as exc:  # any client/network failure: reconnect with backoff
                log.warning("watching Secret %s/%s failed: %s", self.namespace, self.name, exc)
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self._backoff[1])
