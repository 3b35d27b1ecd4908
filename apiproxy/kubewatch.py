"""List+watch of Kubernetes objects with the official client, shared by every part that follows the cluster.

One loop for all of them (the proxy's trust Secret, the exporter's Secrets, ConfigMaps, Services, Nodes and
Pods): **list** (the full set and its ``resourceVersion``), then **watch** from that version; a watch
window that ends (server ``timeoutSeconds``) is resumed from the last version seen, while an ``ERROR``
event (410 Gone: the version is too old) or any client failure starts over with a fresh list, after a
backoff for failures. Each (re)list is delivered as one ``RESET`` event carrying every object, so a
consumer can drop objects deleted while it was disconnected, which a bare watch would never report.

Events are plain mappings: ``{"type": "RESET", "objects": [obj, ...]}`` and
``{"type": "ADDED" | "MODIFIED" | "DELETED", "object": obj}``, objects as the apiserver's JSON dicts.
The I/O is behind :class:`ListWatchClient`, so the loop is tested with a fake and run with
:class:`KubernetesClient`.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

log = logging.getLogger("apiproxy.kubewatch")

Event = Mapping[str, Any]
#: Kinds :class:`KubernetesClient` can follow, by the suffix of the CoreV1Api list methods.
_CORE_KINDS: Final = {"secrets": "secret", "configmaps": "config_map", "services": "service", "pods": "pod"}
DEFAULT_WATCH_SECONDS: Final = 300


@dataclass(frozen=True, slots=True)
class WatchTarget:
    """What to follow: a core/v1 resource, in one namespace or all (``None``), optionally one object by
    name (a ``metadata.name`` field selector, which RBAC ``resourceNames`` can then restrict) or a label
    selector."""

    resource: str
    namespace: str | None = None
    name: str | None = None
    label_selector: str | None = None

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        if self.name:
            return f"{self.resource} {where}{self.name}"
        selector = f" ({self.label_selector})" if self.label_selector else ""
        return f"{self.resource} in {self.namespace or 'all namespaces'}{selector}"

    def selectors(self) -> dict[str, str]:
        out = {}
        if self.name:
            out["field_selector"] = f"metadata.name={self.name}"
        if self.label_selector:
            out["label_selector"] = self.label_selector
        return out


class ListWatchClient(Protocol):
    def list(self, target: WatchTarget) -> tuple[list[dict[str, Any]], str]:
        """Every matching object and the list's ``resourceVersion``."""
        ...

    def watch(self, target: WatchTarget, resource_version: str, stop: threading.Event) -> Iterable[Event]:
        """Watch events after ``resource_version`` until the server ends the window (or ``stop``)."""
        ...


class Relist(Exception):
    """The watch cannot resume (410 Gone or another ``ERROR`` event): list again."""


def list_then_watch(client: ListWatchClient, target: WatchTarget, stop: threading.Event) -> Iterator[Event]:
    """``RESET`` from a list, then the watch events, resuming each window from the last version seen.

    Returns after an ``ERROR`` event (the caller lists again) or when ``stop`` is set; client errors
    propagate to the caller, which backs off.
    """
    objects, version = client.list(target)
    yield {"type": "RESET", "objects": objects}
    while not stop.is_set():
        for event in client.watch(target, version, stop):
            kind = event.get("type")
            obj = event.get("object")
            if kind == "ERROR":
                return
            if isinstance(obj, Mapping):
                version = str(obj.get("metadata", {}).get("resourceVersion") or version)
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                yield event
            if stop.is_set():
                return


EventsFactory = Callable[[threading.Event], Iterable[Event]]


class WatchLoop:
    """Runs ``events(stop)`` on a daemon thread forever, handing each event to ``handle``; reconnects with
    exponential backoff after failures (reset by any event), and at once after a clean end."""

    def __init__(
        self,
        name: str,
        events: EventsFactory,
        handle: Callable[[Event], None],
        *,
        backoff: tuple[float, float] = (1.0, 30.0),
        on_failure: Callable[[Exception], None] | None = None,
    ) -> None:
        self.name = name
        self._events = events
        self._handle = handle
        self._backoff = backoff
        self._on_failure = on_failure
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"watch {self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            failed = False
            try:
                for event in self._events(self._stop):
                    self._handle(event)
                    delay = self._backoff[0]
                    if self._stop.is_set():
                        return
            except Exception as exc:  # any client or network failure: reconnect with backoff
                failed = True
                if not self._stop.is_set():
                    log.warning("watching %s failed: %s", self.name, exc)
                    if self._on_failure is not None:
                        self._on_failure(exc)
            if failed or self._stop.is_set():
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, self._backoff[1])


class KubernetesClient:
    """:class:`ListWatchClient` over the official ``kubernetes`` client (raw JSON, no model objects:
    the consumers read a few fields, and dicts are what the tests and the simulator speak)."""

    def __init__(self, api_client: Any, *, watch_seconds: int = DEFAULT_WATCH_SECONDS) -> None:
        client: Any = importlib.import_module("kubernetes.client")
        self.core = client.CoreV1Api(api_client)
        self.watch_seconds = watch_seconds

    @classmethod
    def from_config(cls, kubeconfig: str | None = None, **kwargs: Any) -> KubernetesClient:
        """From a kubeconfig file, else the in-cluster service account."""
        config: Any = importlib.import_module("kubernetes.config")
        client: Any = importlib.import_module("kubernetes.client")
        if kubeconfig:
            return cls(config.new_client_from_config(config_file=kubeconfig), **kwargs)
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return cls(client.ApiClient(configuration), **kwargs)

    def _call(self, target: WatchTarget) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        if target.resource == "nodes":
            return self.core.list_node, ()
        kind = _CORE_KINDS.get(target.resource)
        if kind is None:
            raise ValueError(f"cannot follow {target.resource!r}")
        if target.namespace:
            return getattr(self.core, f"list_namespaced_{kind}"), (target.namespace,)
        return getattr(self.core, f"list_{kind}_for_all_namespaces"), ()

    def list(self, target: WatchTarget) -> tuple[list[dict[str, Any]], str]:
        method, args = self._call(target)
        response = method(*args, _preload_content=False, **target.selectors())
        try:
            body = json.loads(response.data)
        finally:
            response.release_conn()
        items = body.get("items") or []
        return list(items), str(body.get("metadata", {}).get("resourceVersion", ""))

    def watch(self, target: WatchTarget, resource_version: str, stop: threading.Event) -> Iterator[Event]:
        watch: Any = importlib.import_module("kubernetes.watch")
        exceptions: Any = importlib.import_module("kubernetes.client.exceptions")
        method, args = self._call(target)
        w = watch.Watch()
        try:
            yield from w.stream(
                method,
                *args,
                resource_version=resource_version,
                timeout_seconds=self.watch_seconds,
                allow_watch_bookmarks=True,
                deserialize=False,
                **target.selectors(),
            )
        except exceptions.ApiException as exc:
            if exc.status == 410:
                yield {"type": "ERROR", "object": {"code": 410}}
                return
            raise
        finally:
            w.stop()
