"""The HTTP face of the simulator: one low-level aiohttp handler that answers like kube-apiserver.

``Simulator.handle`` is identify → route → serve. Routing parses the raw path the way kube's request-info
resolver does (``/api/v1/...``, ``/apis/<g>/<v>/...``, ``namespaces/<ns>/<resource>[/<name>[/<sub>]]``,
legacy ``/watch/`` paths); every failure is a :class:`~apiproxy.status.StatusError` rendered as a
``Status``. Bodies come pre-serialised from the store; big lists and all watches are chunked streams.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import datetime
import json
import random
import ssl
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web
from multidict import CIMultiDict

from apiproxy.simulator import discovery, negotiation, tables
from apiproxy.simulator import resources as res
from apiproxy.simulator.negotiation import Form
from apiproxy.simulator.resources import ResourceType
from apiproxy.simulator.selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from apiproxy.simulator.store import (
    ADDED,
    DELETED,
    Collection,
    Event,
    Store,
    StoredObject,
    Watcher,
    dumps,
    event_line,
)
from apiproxy.status import StatusError, status_dict

HEALTH_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
JSON_CT = "application/json"
STREAM_THRESHOLD = 256 * 1024  # bodies above this are written as a chunked stream
CHUNK = 256 * 1024
EXPIRED_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results. Continuing with the provided token results in an inconsistent list - objects "
    "that were created, modified, or deleted between the time the first chunk was returned and now may show "
    "up in the list."
)
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_PF_FLOWSCHEMA = str(uuid.uuid5(uuid.NAMESPACE_URL, "apiproxy-simulator/flowschema"))
_PF_PRIORITY = str(uuid.uuid5(uuid.NAMESPACE_URL, "apiproxy-simulator/prioritylevel"))


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """What the simulator received: tests assert on exactly what the proxy forwarded."""

    method: str
    raw_target: str
    headers: CIMultiDict[str]
    token: str | None


@dataclass(frozen=True, slots=True)
class Target:
    """A routed resource request (kube's RequestInfo, minus the non-resource case)."""

    resource: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    legacy_watch: bool


def _bool_param(query: dict[str, str], key: str) -> bool:
    value = query.get(key)
    if value is None or value == "":
        return False
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise StatusError(400, f'strconv.ParseBool: parsing "{value}": invalid syntax', reason="BadRequest")


def _not_found() -> StatusError:
    return StatusError(404, "the server could not find the requested resource", reason="NotFound")


def _method_not_allowed() -> StatusError:
    return StatusError(
        405, "the server does not allow this method on the requested resource", reason="MethodNotAllowed"
    )


def route(path: str) -> Target | None:
    """Resolve a resource path; None for the discovery roots (``/api``, ``/apis/g/v`` ...)."""
    parts = [unquote(p) for p in path.strip("/").split("/")]
    if parts[0] == "api" and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis" and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise _not_found()
    if not rest:
        return None
    legacy_watch = rest[0] == "watch"
    if legacy_watch:
        rest = rest[1:]
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3 or any(p == "" for p in rest):
        raise _not_found()
    resource = res.lookup(group, version, rest[0])
    if resource is None:
        raise _not_found()
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if namespace is not None and not resource.namespaced:
        raise _not_found()
    if resource.namespaced and namespace is None and name is not None:
        raise _not_found()
    if sub is not None and resource.subresource(sub) is None:
        raise _not_found()
    if legacy_watch and sub is not None:
        raise _not_found()
    return Target(resource, namespace, name, sub, legacy_watch)


def encode_continue(rv: int, key: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_continue(token: str) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4)))
        rv, start = int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError, binascii.Error) as err:
        raise StatusError(
            400, f"invalid continue token: continue key is not valid: {err}", reason="BadRequest"
        ) from None
    if rv <= 0:
        raise StatusError(400, "continue key is not valid: incorrect encoded start resourceVersion")
    return rv, start


class Simulator:
    """A simulated kube-apiserver (see the package docstring for the tour).

    ``tokens`` is the live set of accepted bearer tokens; ``requests`` records every request in arrival
    order unless ``record_requests`` is False (benchmarks); ``store`` holds the objects.
    """

    def __init__(
        self,
        tokens: set[str] | None = None,
        *,
        bookmark_interval: float = 60.0,
        history_limit: int = 10000,
        watch_queue_size: int = 4096,
        record_requests: bool = True,
    ) -> None:
        self.tokens: set[str] = set(tokens or ())
        self.bookmark_interval = bookmark_interval
        self.store = Store(history_limit=history_limit, watch_queue_size=watch_queue_size)
        self.requests: list[RecordedRequest] = []
        self.record_requests = record_requests
        self.url = ""
        self.port = 0
        self._docs = discovery.static_documents()
        self.custom_resources: list[ResourceType] = []
        self._runner: web.ServerRunner | None = None
        self._watch_tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        server = web.Server(self.handle, handler_cancellation=True)
        self._runner = web.ServerRunner(server, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        assert site._server is not None
        sockets = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if ssl_context else 'http'}://{shown}:{self.port}"
        self._docs["/api"] = dumps(discovery.api_versions(f"{shown}:{self.port}"))

    def add_crd(self, crd: Mapping[str, Any]) -> list[ResourceType]:
        """Serve the custom resources of an ``apiextensions.k8s.io/v1`` CRD manifest (list, watch, get,
        create, update, patch, delete, and its ``status`` subresource), and advertise them in discovery."""
        added = [res.register(r) for r in res.resources_from_crd(crd)]
        self.custom_resources += [r for r in added if r not in self.custom_resources]
        api = self._docs.get("/api")
        self._docs = discovery.static_documents(self.custom_resources)
        if api is not None:
            self._docs["/api"] = api
        return added

    async def stop(self) -> None:
        """End every watch stream cleanly (terminating chunk included), then close the server."""
        self.store.close_watchers()
        if self._watch_tasks:
            await asyncio.wait(set(self._watch_tasks), timeout=5.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- request pipeline --------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw_target = request.raw_path
        path, _, query_string = raw_target.partition("?")
        token = self._bearer(request)
        if self.record_requests:
            self.requests.append(RecordedRequest(request.method, raw_target, request.headers.copy(), token))
        headers = {
            # kube-apiserver keeps the caller's Audit-ID, so one ID follows a request across proxies.
            "Audit-Id": request.headers.get("Audit-ID") or str(uuid.uuid4()),
            "Cache-Control": "no-cache, private",
            "X-Kubernetes-Pf-Flowschema-Uid": _PF_FLOWSCHEMA,
            "X-Kubernetes-Pf-Prioritylevel-Uid": _PF_PRIORITY,
        }
        try:
            if path in HEALTH_PATHS or any(path.startswith(p + "/") for p in HEALTH_PATHS):
                return web.Response(text="ok", content_type="text/plain", headers=headers)
            if token is None or token not in self.tokens:
                raise StatusError(401, "Unauthorized", reason="Unauthorized")
            query: dict[str, str] = {}
            for key, value in parse_qsl(query_string, keep_blank_values=True):
                query.setdefault(key, value)  # kube reads the first value of each parameter
            return await self._dispatch(request, path, query, headers)
        except StatusError as err:
            return web.Response(
                status=err.code,
                body=dumps(status_dict(err.code, err.message, reason=err.reason, details=err.details))
                + b"\n",
                content_type=JSON_CT,
                headers={**headers, **(err.headers or {})},
            )

    @staticmethod
    def _bearer(request: web.BaseRequest) -> str | None:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()

    async def _dispatch(
        self, request: web.BaseRequest, path: str, query: dict[str, str], headers: dict[str, str]
    ) -> web.StreamResponse:
        method = request.method
        if len(path) > 1:
            path = path.rstrip("/")
        doc = self._docs.get(path)
        if doc is not None:
            if method != "GET":
                raise _method_not_allowed()
            negotiation.negotiate(request.headers.get("Accept"))
            return web.Response(body=doc, content_type=JSON_CT, headers=headers)
        target = route(path)
        if target is None:  # /api/<unknown version>, /apis/<unknown group>/...
            raise _not_found()
        r = target.resource
        accept = request.headers.get("Accept")
        if method == "GET":
            if target.subresource is not None:
                return self._get_subresource(target, query, accept, headers)
            watching = target.legacy_watch or _bool_param(query, "watch")
            if watching:
                self._require(r, "watch")
                form = negotiation.negotiate(accept, negotiation.OBJECT_CONVERSIONS)
                return await self._watch(request, target, query, form, headers)
            if target.name is not None:
                self._require(r, "get")
                form = negotiation.negotiate(accept, negotiation.OBJECT_CONVERSIONS)
                so = self.store.get_stored(r, target.namespace, target.name)
                return self._object_response(so, form, query, headers)
            self._require(r, "list")
            form = negotiation.negotiate(accept, negotiation.LIST_CONVERSIONS)
            return await self._list(request, target, query, form, headers)
        if target.subresource == "status" and r.has_status_subresource and method in ("PUT", "PATCH"):
            self._require(r, "update" if method == "PUT" else "patch")
            if method == "PUT":
                return self._update(target, await self._json_body(request), headers)
            return await self._patch(request, target, headers)
        if target.legacy_watch or target.subresource is not None:
            raise _method_not_allowed()
        if method == "POST" and target.name is None:
            self._require(r, "create")
            body = await self._json_body(request)
            if not r.storable:
                return self._review(r, target.namespace, body, headers)
            return self._create(target, body, headers)
        if method == "PUT" and target.name is not None:
            self._require(r, "update")
            body = await self._json_body(request)
            return self._update(target, body, headers)
        if method == "PATCH" and target.name is not None:
            self._require(r, "patch")
            return await self._patch(request, target, headers)
        if method == "DELETE":
            if target.name is None:
                self._require(r, "deletecollection")
                lsel, fsel = self._selectors(r, query)
                gone = self.store.delete_collection(r, target.namespace, lsel, fsel)
                body = {
                    "kind": r.list_kind,
                    "apiVersion": r.api_version,
                    "metadata": {"resourceVersion": str(self.store.resource_version)},
                    "items": gone,
                }
                return web.Response(body=dumps(body), content_type=JSON_CT, headers=headers)
            self._require(r, "delete")
            deleted = self.store.delete(r, target.namespace, target.name)
            return web.Response(body=dumps(deleted), content_type=JSON_CT, headers=headers)
        raise _method_not_allowed()

    @staticmethod
    def _require(r: ResourceType, verb: str) -> None:
        if verb not in r.verbs:
            raise _method_not_allowed()

    # -- reads -------------------------------------------------------------------------------------

    def _selectors(self, r: ResourceType, query: dict[str, str]) -> tuple[LabelSelector, FieldSelector]:
        label_text = query.get("labelSelector", "")
        field_text = query.get("fieldSelector", "")
        try:
            lsel = parse_label_selector(label_text)
        except SelectorError as err:
            text = str(err)
            if not text.startswith("unable to parse requirement"):
                text = f"unable to parse requirement: {text}"
            raise StatusError(400, text, reason="BadRequest") from None
        allowed = frozenset({"metadata.name", "metadata.namespace", *r.extra_fields})
        try:
            fsel = parse_field_selector(field_text, allowed)
        except SelectorError as err:
            raise StatusError(
                400,
                f'Unable to find "{r.gvr}" that match label selector "{label_text}", '
                f'field selector "{field_text}": {err}',
                reason="BadRequest",
            ) from None
        return lsel, fsel

    def _object_response(
        self, so: StoredObject, form: Form, query: dict[str, str], headers: dict[str, str]
    ) -> web.Response:
        if form.kind == "meta":
            body = so.partial
        elif form.kind == "table":
            body = self._table([so], form, query, {"resourceVersion": str(so.rv)}, headers=True)
        else:
            body = so.full
        return web.Response(body=body + b"\n", content_type=JSON_CT, headers=headers)

    def _table(
        self,
        objects: list[StoredObject],
        form: Form,
        query: dict[str, str],
        list_meta: dict[str, Any],
        *,
        headers: bool,
    ) -> bytes:
        r = objects[0].resource if objects else None
        include = query.get("includeObject", "Metadata")
        now = datetime.datetime.now(datetime.UTC)
        rows = []
        for so in objects:
            obj = so.to_dict()
            row: dict[str, Any] = {"cells": tables.cells(so.resource, obj, now)}
            if include == "Object":
                row["object"] = obj
            elif include != "None":
                row["object"] = json.loads(so.partial)
            rows.append(row)
        table: dict[str, Any] = {
            "kind": "Table",
            "apiVersion": f"meta.k8s.io/{form.version}",
            "metadata": list_meta,
            "columnDefinitions": tables.column_definitions(r) if (headers and r is not None) else None,
            "rows": rows,
        }
        return dumps(table)

    def _get_subresource(
        self, target: Target, query: dict[str, str], accept: str | None, headers: dict[str, str]
    ) -> web.Response:
        r, sub = target.resource, target.subresource
        assert target.name is not None and sub is not None
        so = self.store.get_stored(r, target.namespace, target.name)
        if sub == "status":
            form = negotiation.negotiate(accept, negotiation.OBJECT_CONVERSIONS)
            return self._object_response(so, form, query, headers)
        if sub == "log":
            return web.Response(text=_fake_log(so, query), content_type="text/plain", headers=headers)
        if sub in ("exec", "attach", "portforward"):
            raise StatusError(400, "Upgrade request required", reason="BadRequest")
        raise _method_not_allowed()

    async def _list(
        self,
        request: web.BaseRequest,
        target: Target,
        query: dict[str, str],
        form: Form,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        r = target.resource
        coll = self.store.collection(r)
        lsel, fsel = self._selectors(r, query)
        rv_param = query.get("resourceVersion", "")
        cont = query.get("continue", "")
        limit = 0
        if query.get("limit"):
            try:
                limit = max(0, int(query["limit"]))
            except ValueError:
                raise StatusError(400, f"invalid limit: {query['limit']!r}", reason="BadRequest") from None
        if rv_param == "0":
            limit = 0  # served from the watch cache, which ignores limit (kube < 1.33)
        if rv_param:
            try:
                int(rv_param)
            except ValueError:
                raise StatusError(
                    400,
                    f"resourceVersion: Invalid value: {rv_param!r}: must be an integer",
                    reason="BadRequest",
                ) from None
        snapshot_rv: int | None = None
        start: str | None = None
        if cont:
            if rv_param:
                raise StatusError(
                    400, "specifying resource version is not allowed when using continue", reason="BadRequest"
                )
            snapshot_rv, start = decode_continue(cont)
            if snapshot_rv < coll.compacted_rv:
                raise StatusError(410, EXPIRED_CONTINUE, reason="Expired")
        list_rv = snapshot_rv if snapshot_rv is not None else self.store.resource_version
        probe = Watcher(target.namespace, lsel, fsel, 0)
        items, more = _collect(coll, probe, target.namespace, snapshot_rv, start, limit)
        list_meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if more and items:
            list_meta["continue"] = encode_continue(list_rv, items[-1].key)
            if not lsel and not fsel and snapshot_rv is None:
                # kube counts what is left under the listed key prefix (the namespace, or everything)
                # whenever no selector filters the list.
                end = (
                    bisect.bisect_left(coll.keys, f"{target.namespace}0")  # "0" sorts right after "/"
                    if target.namespace is not None
                    else len(coll.keys)
                )
                list_meta["remainingItemCount"] = end - bisect.bisect_right(coll.keys, items[-1].key)
        if form.kind == "table":
            if not items:
                body = dumps(
                    {
                        "kind": "Table",
                        "apiVersion": f"meta.k8s.io/{form.version}",
                        "metadata": list_meta,
                        "columnDefinitions": tables.column_definitions(r),
                        "rows": [],
                    }
                )
            else:
                body = self._table(items, form, query, list_meta, headers=True)
            return web.Response(body=body, content_type=JSON_CT, headers=headers)
        if form.kind == "meta":
            head = {"kind": "PartialObjectMetadataList", "apiVersion": f"meta.k8s.io/{form.version}"}
            parts: list[bytes] = [so.partial for so in items]
        else:
            head = {"kind": r.list_kind, "apiVersion": r.api_version}
            parts = [so.body for so in items]
        prefix = dumps({**head, "metadata": list_meta})[:-1] + b',"items":['
        size = len(prefix) + sum(len(p) + 1 for p in parts)
        if size <= STREAM_THRESHOLD:
            return web.Response(
                body=prefix + b",".join(parts) + b"]}\n", content_type=JSON_CT, headers=headers
            )
        resp = web.StreamResponse(headers={**headers, "Content-Type": JSON_CT})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for chunk in _chunks(prefix, parts, b"]}\n"):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    # -- watch -------------------------------------------------------------------------------------

    async def _watch(
        self,
        request: web.BaseRequest,
        target: Target,
        query: dict[str, str],
        form: Form,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        r = target.resource
        lsel, fsel = self._selectors(r, query)
        if target.name is not None:
            fsel = parse_field_selector(",".join(filter(None, [str(fsel), f"metadata.name={target.name}"])))
        rv_param = query.get("resourceVersion", "")
        bookmarks = _bool_param(query, "allowWatchBookmarks")
        initial_param = query.get("sendInitialEvents")
        send_initial = _bool_param(query, "sendInitialEvents")
        rv_match = query.get("resourceVersionMatch", "")
        if initial_param is not None and initial_param != "":
            if rv_match != "NotOlderThan":
                raise _invalid_list_options(
                    "resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
                    "resourceVersionMatch to NotOlderThan"
                )
            if send_initial and not bookmarks:
                raise _invalid_list_options(
                    "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks "
                    "to true"
                )
        elif rv_match:
            raise _invalid_list_options(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless "
                "sendInitialEvents is provided"
            )
        since: int | None = None
        if rv_param not in ("", "0") and not send_initial:
            try:
                since = int(rv_param)
            except ValueError:
                raise StatusError(
                    400,
                    f"resourceVersion: Invalid value: {rv_param!r}: must be an integer",
                    reason="BadRequest",
                ) from None
        timeout = random.uniform(1800.0, 3600.0)  # noqa: S311 - kube's default spread, not security
        if query.get("timeoutSeconds"):
            try:
                timeout = float(int(query["timeoutSeconds"]))
            except ValueError:
                raise StatusError(400, "invalid timeoutSeconds", reason="BadRequest") from None

        resp = web.StreamResponse(headers={**headers, "Content-Type": JSON_CT})
        resp.enable_chunked_encoding()
        try:
            watcher, backlog = self.store.watch(r, target.namespace, lsel, fsel, since=since)
        except StatusError as err:
            if err.code != 410:
                raise
            # kube's watch cache: 200, one ERROR event carrying the 410 Status, end of stream.
            await resp.prepare(request)
            status = status_dict(410, err.message, reason="Expired")
            await resp.write(event_line("ERROR", dumps(status)))
            await resp.write_eof()
            return resp
        task = asyncio.current_task()
        if task is not None:
            self._watch_tasks.add(task)
        try:
            await resp.prepare(request)
            stream = _WatchStream(self, r, watcher, form, query, bookmarks)
            await stream.run(resp, backlog, since is None, send_initial, timeout)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.store.unwatch(r, watcher)
            if task is not None:
                self._watch_tasks.discard(task)
        return resp

    # -- writes ------------------------------------------------------------------------------------

    @staticmethod
    async def _json_body(request: web.BaseRequest) -> dict[str, Any]:
        ctype = request.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        if ctype not in ("application/json", ""):
            raise StatusError(
                415,
                f"the body of the request was in an unknown format - accepted media types include: {JSON_CT}",
                reason="UnsupportedMediaType",
            )
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError as err:
            raise StatusError(400, f"couldn't get version/kind; json parse error: {err}") from None
        if not isinstance(body, dict):
            raise StatusError(400, "couldn't get version/kind; json parse error: not an object")
        return body

    def _check_namespace(self, target: Target, body: dict[str, Any]) -> None:
        r = target.resource
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise StatusError(400, "metadata must be an object")
        if r.namespaced:
            if meta.get("namespace") and meta["namespace"] != target.namespace:
                raise StatusError(
                    400,
                    "the namespace of the provided object does not match the namespace sent on the request",
                    reason="BadRequest",
                )
            meta["namespace"] = target.namespace
            if self.store.get("namespaces", None, str(target.namespace)) is None:
                raise StatusError(
                    404,
                    f'namespaces "{target.namespace}" not found',
                    reason="NotFound",
                    details={"name": str(target.namespace), "kind": "namespaces"},
                )
        body["apiVersion"], body["kind"] = target.resource.api_version, target.resource.kind

    def _create(self, target: Target, body: dict[str, Any], headers: dict[str, str]) -> web.Response:
        self._check_namespace(target, body)
        so = self.store.create_stored(body, resource=target.resource)
        return web.Response(status=201, body=so.full, content_type=JSON_CT, headers=headers)

    def _update(self, target: Target, body: dict[str, Any], headers: dict[str, str]) -> web.Response:
        self._check_namespace(target, body)
        name = body["metadata"].get("name")
        if name != target.name:
            raise StatusError(
                400,
                f"the name of the object ({name}) does not match the name on the URL ({target.name})",
                reason="BadRequest",
            )
        updated = self.store.update(body, resource=target.resource, subresource=target.subresource)
        return web.Response(body=dumps(updated), content_type=JSON_CT, headers=headers)

    async def _patch(self, request: web.BaseRequest, target: Target, headers: dict[str, str]) -> web.Response:
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype not in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/json-patch+json",
        ):
            raise StatusError(
                415,
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, "
                "application/strategic-merge-patch+json",
                reason="UnsupportedMediaType",
            )
        try:
            patch = json.loads(await request.read())
        except ValueError as err:
            raise StatusError(400, f"error decoding patch: {err}") from None
        if ctype == "application/json-patch+json":
            assert target.name is not None
            if not isinstance(patch, list):
                raise StatusError(400, "error decoding patch: a JSON patch is an array")
            patched = self.store.json_patch(
                target.resource, target.namespace, target.name, patch, subresource=target.subresource
            )
            return web.Response(body=dumps(patched), content_type=JSON_CT, headers=headers)
        if not isinstance(patch, dict):
            raise StatusError(400, "error decoding patch: not an object")
        assert target.name is not None
        patched = self.store.patch(
            target.resource, target.namespace, target.name, patch, subresource=target.subresource
        )
        return web.Response(body=dumps(patched), content_type=JSON_CT, headers=headers)

    def _review(
        self, r: ResourceType, namespace: str | None, body: dict[str, Any], headers: dict[str, str]
    ) -> web.Response:
        """TokenReview / *SubjectAccessReview / SelfSubjectReview: answer and persist nothing."""
        spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
        assert isinstance(spec, dict)
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        assert isinstance(meta, dict)
        meta = {**meta, "creationTimestamp": None}
        if r.namespaced:
            meta["namespace"] = namespace
        status: dict[str, Any]
        if r.kind == "TokenReview":
            token = str(spec.get("token", ""))
            if token in self.tokens:
                status = {
                    "authenticated": True,
                    "user": {
                        "username": "system:serviceaccount:istio-system:istio-reader-service-account",
                        "uid": str(uuid.uuid5(uuid.NAMESPACE_OID, token)),
                        "groups": [
                            "system:serviceaccounts",
                            "system:serviceaccounts:istio-system",
                            "system:authenticated",
                        ],
                    },
                    "audiences": spec.get("audiences") or ["https://kubernetes.default.svc.cluster.local"],
                }
            else:
                status = {"user": {}, "error": "[invalid bearer token, token lookup failed]"}
        elif r.kind == "SelfSubjectReview":
            status = {"userInfo": {"username": "system:serviceaccount:default:simulator", "groups": []}}
        else:
            status = {"allowed": True, "reason": "the simulator allows every request"}
        out = {"kind": r.kind, "apiVersion": r.api_version, "metadata": meta, "spec": spec, "status": status}
        return web.Response(status=201, body=dumps(out), content_type=JSON_CT, headers=headers)


def _invalid_list_options(detail: str) -> StatusError:
    return StatusError(
        422,
        f'ListOptions.meta.k8s.io "" is invalid: {detail}',
        reason="Invalid",
        details={"group": "meta.k8s.io", "kind": "ListOptions"},
    )


def _collect(
    coll: Collection,
    probe: Watcher,
    namespace: str | None,
    snapshot_rv: int | None,
    start: str | None,
    limit: int,
) -> tuple[list[StoredObject], bool]:
    """Matching objects in key order, at most ``limit`` (0 = all); ``more`` if another one follows."""
    if snapshot_rv is not None:
        source: Iterator[StoredObject] = coll.snapshot_iter(snapshot_rv, start)
    elif namespace is not None and start is None:
        source = coll.iter_from(f"{namespace}/")  # "ns/" sorts just before every "ns/<name>"
    else:
        source = coll.iter_from(start)
    prefix = f"{namespace}/" if namespace is not None and coll.resource.namespaced else None
    items: list[StoredObject] = []
    for so in source:
        if prefix is not None and not so.key.startswith(prefix):
            if so.key > prefix:
                break
            continue
        if not probe.matches(so):
            continue
        if limit and len(items) == limit:
            return items, True
        items.append(so)
    return items, False


def _chunks(prefix: bytes, parts: list[bytes], suffix: bytes) -> Iterator[bytes]:
    batch: list[bytes] = [prefix]
    size = len(prefix)
    for i, part in enumerate(parts):
        if i:
            batch.append(b",")
        batch.append(part)
        size += len(part) + 1
        if size >= CHUNK:
            yield b"".join(batch)
            batch, size = [], 0
    batch.append(suffix)
    yield b"".join(batch)


def _fake_log(so: StoredObject, query: dict[str, str]) -> str:
    container = query.get("container") or "app"
    lines = [
        f"2024-10-22T20:30:{i:02d}.000000Z info {container} {so.namespace}/{so.name} request status=200"
        for i in range(20)
    ]
    if query.get("tailLines", "").isdigit():
        lines = lines[-int(query["tailLines"]) :] if int(query["tailLines"]) else []
    return "".join(line + "\n" for line in lines)


class _WatchStream:
    """Writes one watch: backlog, optional initial-events bookmark, then live events and bookmarks."""

    def __init__(
        self,
        sim: Simulator,
        resource: ResourceType,
        watcher: Watcher,
        form: Form,
        query: dict[str, str],
        bookmarks: bool,
    ) -> None:
        self.sim = sim
        self.resource = resource
        self.watcher = watcher
        self.form = form
        self.query = query
        self.bookmarks = bookmarks
        self.table_headers_sent = False

    def _obj_line(self, type_: str, so: StoredObject) -> bytes:
        if self.form.kind == "meta":
            return event_line(type_, so.partial)
        if self.form.kind == "table":
            return event_line(type_, self._table(so))
        return event_line(type_, so.full)

    def _table(self, so: StoredObject) -> bytes:
        first = not self.table_headers_sent
        self.table_headers_sent = True
        return self.sim._table([so], self.form, self.query, {"resourceVersion": str(so.rv)}, headers=first)

    def _event_line(self, type_: str, ev: Event, use_prev: bool) -> bytes:
        if self.form.kind == "table":
            return self._obj_line(type_, ev.prev_at_rv() if use_prev else ev.obj)
        return ev.line(type_, use_prev, self.form.kind)

    def _bookmark(self, initial_end: bool) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(self.sim.store.resource_version)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        r = self.resource
        if self.form.kind == "meta":
            obj = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
        else:
            obj = {"kind": r.kind, "apiVersion": r.api_version, "metadata": meta}
        return event_line("BOOKMARK", dumps(obj))

    async def run(
        self,
        resp: web.StreamResponse,
        backlog: list[StoredObject] | list[Event],
        initial_state: bool,
        send_initial: bool,
        timeout: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        watcher = self.watcher
        batch: list[bytes] = []
        size = 0
        for item in backlog:
            if isinstance(item, StoredObject):
                line = self._obj_line(ADDED, item)
            else:
                seen = watcher.translate(item)
                if seen is None:
                    continue
                line = self._event_line(seen[0], item, seen[1])
            batch.append(line)
            size += len(line)
            if size >= CHUNK:
                await resp.write(b"".join(batch))
                batch, size = [], 0
        if self.bookmarks and initial_state:
            # Drain what arrived meanwhile first, so the bookmark's RV covers everything sent before it.
            batch.extend(self._drain())
            batch.append(self._bookmark(initial_end=send_initial))
        if batch:
            await resp.write(b"".join(batch))
        interval = self.sim.bookmark_interval
        next_bookmark = loop.time() + interval
        while not watcher.closed:
            now = loop.time()
            if now >= deadline:
                return
            wait = deadline - now
            if self.bookmarks:
                wait = min(wait, max(0.0, next_bookmark - now))
            if not watcher.pending:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await watcher.wake.wait()
            watcher.wake.clear()
            lines = self._drain()
            if self.bookmarks and loop.time() >= next_bookmark:
                lines.append(self._bookmark(initial_end=False))
                next_bookmark = loop.time() + interval
            if lines:
                await resp.write(b"".join(lines))
        # Closed by the server (stop) or for falling behind: flush what is queued, then end.
        if not watcher.overflowed:
            rest = self._drain()
            if rest:
                await resp.write(b"".join(rest))

    def _drain(self) -> list[bytes]:
        pending = self.watcher.pending
        lines = []
        while pending:
            type_, ev, use_prev = pending.popleft()
            lines.append(self._event_line(type_, ev, use_prev))
        return lines


__all__ = ["DELETED", "RecordedRequest", "Simulator", "Target", "route"]
