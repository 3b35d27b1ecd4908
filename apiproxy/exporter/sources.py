"""Where the inputs come from: Kubernetes watches or files, each feeding :class:`ExporterState`.

Kubernetes (the default): one :class:`~apiproxy.kubewatch.WatchLoop` per source, list then watch, with
the official client. Single objects are followed by name (``metadata.name`` field selector, which RBAC
``resourceNames`` can pin); the gateway Service and pods by label in the exporter's namespace; Nodes and
the public Services cluster-wide. A file given for an input replaces that input's watch; files are
polled by :class:`~apiproxy.reload.Reloader` like the proxy's, and parsed the same way.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apiproxy.auth import TrustStoreError, build_trust_store
from apiproxy.auth.secretsource import DATA_KEY as TRUST_KEY
from apiproxy.exporter.derive import (
    ADVERTISE_KEY,
    KEYPAIR_PUBLIC_KEY,
    ROOT_CA_KEY,
    NextKeyInput,
    advertise_from_configmap,
    authn_key_from_secret,
    name_of,
    next_key_from_secret,
    root_ca_from_configmap,
    secret_value,
)
from apiproxy.exporter.settings import ExporterSettings
from apiproxy.exporter.state import ExporterState
from apiproxy.kubewatch import Event, ListWatchClient, WatchLoop, WatchTarget, list_then_watch, summary
from apiproxy.metadata import MetadataFormatError, parse_ingress_gateways
from apiproxy.metadata.formats import check_root_ca, deckhouse_public_key_pem
from apiproxy.reload import Reloader, WatchedFile, WatchedFiles

log = logging.getLogger("apiproxy.exporter")

Obj = Mapping[str, Any]


class ObjectSet:
    """The objects of one watch, kept current from its events (a ``RESET`` replaces them all)."""

    def __init__(self) -> None:
        self._objects: dict[str, Obj] = {}

    def apply(self, event: Event) -> list[Obj] | None:
        """The objects after ``event``, sorted by namespace/name; None for events that change nothing."""
        kind = event.get("type")
        if kind == "RESET":
            self._objects = {name_of(o): o for o in event.get("objects") or () if isinstance(o, Mapping)}
        else:
            obj = event.get("object")
            if not isinstance(obj, Mapping):
                return None
            if kind in ("ADDED", "MODIFIED"):
                self._objects[name_of(obj)] = obj
            elif kind == "DELETED":
                self._objects.pop(name_of(obj), None)
            else:
                return None
        return [self._objects[k] for k in sorted(self._objects)]


@dataclass(frozen=True, slots=True)
class Watched:
    """One Kubernetes source: what to watch and what to do with the objects."""

    source: str
    target: WatchTarget
    apply: Callable[[list[Obj]], None]


def _single(
    state: ExporterState,
    source: str,
    what: str,
    key: str,
    convert: Callable[[Obj, str], Any],
) -> Callable[[list[Obj]], None]:
    """Handler of a one-object source: absent object or key → missing; unusable → refused, last kept."""

    def apply(objects: list[Obj]) -> None:
        if not objects:
            state.set_value(source, None, f"{what} not found")
            return
        try:
            value = convert(objects[0], key)
        except MetadataFormatError as exc:
            state.refuse(source, str(exc))
            return
        state.set_value(source, value, None if value is not None else f"{what} has no key {key}")

    return apply


def _keypair_apply(state: ExporterState, what: str) -> Callable[[list[Obj]], None]:
    """Handler of the keypair Secret: the current key and, during a rotation, the next key and its proof,
    delivered together so a promotion (new ``pub.pem``, ``next-*`` gone) is one change of ``public.json``.

    An unusable ``pub.pem`` is refused whole (the last good key keeps serving); a broken next key is
    refused alone: the current key is still published, the next one is not.
    """

    def apply(objects: list[Obj]) -> None:
        if not objects:
            state.set_values({"authn_key": None, "authn_next": None}, {"authn_key": f"{what} not found"})
            return
        try:
            current = authn_key_from_secret(objects[0], KEYPAIR_PUBLIC_KEY)
        except MetadataFormatError as exc:
            state.refuse("authn_key", str(exc))
            return
        refused = None
        try:
            nxt = next_key_from_secret(objects[0])
        except MetadataFormatError as exc:
            nxt, refused = None, str(exc)
        missing = {"authn_key": f"{what} has no key {KEYPAIR_PUBLIC_KEY}"}
        state.set_values({"authn_key": current, "authn_next": nxt}, missing)
        if refused is not None:
            state.refuse("authn_next", refused)

    return apply


def _trust_apply(state: ExporterState, what: str) -> Callable[[list[Obj]], None]:
    def apply(objects: list[Obj]) -> None:
        try:
            raw = secret_value(objects[0], TRUST_KEY) if objects else None
            store = build_trust_store(raw)  # no Secret (no peer yet): an empty store, nobody gets in
        except (MetadataFormatError, TrustStoreError) as exc:
            state.refuse("trust", f"{what}: {exc}")
            return
        state.set_trust(store)

    return apply


def kubernetes_sources(settings: ExporterSettings, state: ExporterState) -> list[Watched]:
    """The watches for every input that no file replaces."""
    ns = settings.namespace
    out: list[Watched] = []
    if settings.authn_public_key_file is None:
        what = f"Secret {ns}/{settings.authn_keypair_secret}"
        out.append(
            Watched(
                "authn_key",
                WatchTarget("secrets", ns, name=settings.authn_keypair_secret),
                _keypair_apply(state, what),
            )
        )
    if settings.root_ca_file is None:
        what = f"ConfigMap {ns}/{settings.root_ca_configmap}"
        out.append(
            Watched(
                "root_ca",
                WatchTarget("configmaps", ns, name=settings.root_ca_configmap),
                _single(state, "root_ca", what, ROOT_CA_KEY, root_ca_from_configmap),
            )
        )
    if settings.trust_file is None:
        what = f"Secret {ns}/{settings.trust_secret}"
        out.append(
            Watched(
                "trust", WatchTarget("secrets", ns, name=settings.trust_secret), _trust_apply(state, what)
            )
        )
    if settings.ingress_gateways_file is None:
        what = f"ConfigMap {ns}/{settings.advertise_configmap}"
        selector = settings.ingress_gateway_selector
        out += [
            Watched(
                "advertise",
                WatchTarget("configmaps", ns, name=settings.advertise_configmap),
                _single(state, "advertise", what, ADVERTISE_KEY, advertise_from_configmap),
            ),
            Watched(
                "gateway_services",
                WatchTarget("services", ns, label_selector=selector),
                lambda objs: state.set_objects("gateway_services", objs),
            ),
            Watched(
                "gateway_pods",
                WatchTarget("pods", ns, label_selector=selector),
                lambda objs: state.set_objects("gateway_pods", objs),
            ),
            Watched("nodes", WatchTarget("nodes"), lambda objs: state.set_objects("nodes", objs)),
        ]
    if out:
        out.append(
            Watched(
                "public_services",
                WatchTarget("services", None, label_selector=settings.public_service_label),
                lambda objs: state.set_objects("public_services", objs),
            )
        )
    return out


def start_watches(
    watched: Iterable[Watched], client: ListWatchClient, state: ExporterState, *, backoff: tuple[float, float]
) -> list[WatchLoop]:
    loops = []
    for w in watched:
        objects = ObjectSet()

        def handle(event: Event, objects: ObjectSet = objects, w: Watched = w) -> None:
            current = objects.apply(event)
            if current is not None:
                w.apply(current)

        def failed(exc: Exception, source: str = w.source) -> None:
            state.watch_failed(source, f"watch failed: {summary(exc)}")

        def events(stop: threading.Event, target: WatchTarget = w.target) -> Iterator[Event]:
            return list_then_watch(client, target, stop)

        loop = WatchLoop(
            str(w.target),
            events,
            handle,
            backoff=backoff,
            on_failure=failed,
        )
        loop.start()
        loops.append(loop)
    return loops


# --- files ----------------------------------------------------------------------------------------------


def _parse_trust(data: bytes, where: str) -> Any:
    try:
        return build_trust_store(data)
    except TrustStoreError as exc:
        raise ValueError(str(exc)) from exc


def file_sources(settings: ExporterSettings) -> list[tuple[str, Path, Callable[[bytes, str], Any]]]:
    files: list[tuple[str, Path | None, Callable[[bytes, str], Any]]] = [
        ("authn_key", settings.authn_public_key_file, lambda d, _: deckhouse_public_key_pem(d)),
        ("root_ca", settings.root_ca_file, lambda d, _: check_root_ca(d.decode("ascii"))),
        ("trust", settings.trust_file, _parse_trust),
        ("ingress_gateways_file", settings.ingress_gateways_file, lambda d, w: parse_ingress_gateways(d, w)),
    ]
    return [(source, path, parse) for source, path, parse in files if path is not None]


def read_next_key(public: Path, proof: Path) -> NextKeyInput | None:
    """The next key and proof files: both absent is no rotation under way, one alone is an error."""
    contents: list[bytes | None] = []
    for path in (public, proof):
        try:
            contents.append(path.read_bytes())
        except FileNotFoundError:
            contents.append(None)
    pub, sig = contents
    if pub is None and sig is None:
        return None
    if pub is None or sig is None:
        raise ValueError(f"only one of {public} and {proof} exists")
    return NextKeyInput(pub, sig)


def _watch_next_key(settings: ExporterSettings, state: ExporterState, reloader: Reloader) -> None:
    """The next key files, read with the current key file and delivered together with it.

    A promotion replaces ``pub.pem`` and removes the ``next-*`` files at once (a mounted Secret swaps
    them in one rename). Reading the next key first and the current key second, a swap between the
    reads gives the new current key with the old next key, which the state recognises as a promotion;
    the other order could publish the old key without its next one, and a peer fetching then would
    forget the next key it is about to need.
    """
    public, proof = settings.authn_next_public_key_file, settings.authn_next_proof_file
    current_file = settings.authn_public_key_file
    if public is None or proof is None or current_file is None:
        return

    def load() -> None:
        values: dict[str, Any] = {"authn_next": read_next_key(public, proof)}
        # A broken current key file is reported by its own source, which keeps its last good value.
        with contextlib.suppress(OSError, MetadataFormatError):
            values["authn_key"] = deckhouse_public_key_pem(current_file.read_bytes())
        state.set_values(values)

    watched = WatchedFiles("rotation's next key", [public, proof, current_file], load)

    def result(name: str, error: str | None) -> None:
        if error is not None:
            state.refuse("authn_next", error)

    watched.on_result = result
    try:
        load()
    except (OSError, ValueError) as exc:
        state.set_value("authn_next", None)  # the current key is still published: ready without the next
        state.refuse("authn_next", f"rotation's next key: {exc}")
    reloader.add(watched)


def watch_files(
    settings: ExporterSettings, state: ExporterState, reloader: Reloader
) -> list[WatchedFile[Any]]:
    """Load each file source now (a broken one is reported and retried) and register it for reloads."""
    out: list[WatchedFile[Any]] = []
    for source, path, parse in file_sources(settings):
        watched: WatchedFile[Any] = WatchedFile(source, path, parse)

        def deliver(watched: WatchedFile[Any] = watched, source: str = source) -> None:
            if source == "trust":
                state.set_trust(watched.current)
            else:
                state.set_value(source, watched.current)

        def result(name: str, error: str | None, source: str = source) -> None:
            if error is not None:
                state.refuse(source, error)

        watched.on_result = result
        if watched.refresh():
            deliver()
        reloader.add(watched, deliver)
        out.append(watched)
    _watch_next_key(settings, state, reloader)
    return out


def source_names(settings: ExporterSettings) -> list[str]:
    """Every source these settings use, files and watches alike (readiness waits for all of them)."""
    names = [source for source, _, _ in file_sources(settings)]
    if settings.authn_next_public_key_file is not None:
        names.append("authn_next")
    kube = []
    if settings.authn_public_key_file is None:
        kube += ["authn_key", "authn_next"]
    if settings.root_ca_file is None:
        kube.append("root_ca")
    if settings.trust_file is None:
        kube.append("trust")
    if settings.ingress_gateways_file is None:
        kube += ["advertise", "gateway_services", "gateway_pods", "nodes"]
    if kube:
        kube.append("public_services")
    return names + kube
