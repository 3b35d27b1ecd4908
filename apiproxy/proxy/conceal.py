"""What the proxy answers, by itself, for a concealed resource: the bytes kube-apiserver would send if the
resource held no objects at all.

A policy rule with ``action: conceal`` names a resource a client insists on watching but must never see
(a remote istiod's Secret informer: a 403 would keep it retrying for ever). The proxy sends nothing of
such a request upstream; it answers here:

* LIST → an empty list of the right kind with the apiserver's current ``resourceVersion`` (read by the
  caller, see :mod:`apiproxy.proxy.upstream_facts`), so a watch started from it is valid at the
  apiserver's clock;
* WATCH → a stream of BOOKMARK events only (when the client allows bookmarks), the first one marked
  ``k8s.io/initial-events-end`` for a streaming list (``sendInitialEvents=true``);
* GET of a name → 404 ``Status`` worded as kube-apiserver words it.

Everything here is pure: a request's ``Accept`` header, query and the current resourceVersion in, bytes
out, one function per wire shape, so each can be compared byte for byte with a real apiserver's. Wire
facts, from k8s.io/apimachinery and k8s.io/apiserver (v0.37):

* JSON bodies are Go's compact ``encoding/json`` output plus a newline (``json.Encoder``); empty strings,
  zero times and nil maps are omitted (``omitempty``/``omitzero``); an empty list keeps ``"items":[]``.
* Protobuf bodies are ``k8s\\0`` + ``runtime.Unknown`` {typeMeta {apiVersion, kind}, raw, contentEncoding
  "", contentType ""}. The generated Go marshallers write every non-pointer string, integer and
  embedded-message field even when empty: ``ListMeta`` is {1 selfLink "", 2 resourceVersion, 3 continue
  ""}, ``ObjectMeta`` is {1 name "", 2 generateName "", 3 namespace "", 4 selfLink "", 5 uid "",
  6 resourceVersion, 7 generation 0, 8 creationTimestamp {} (zero time: an empty message), 12 annotations
  (map entries {1 key, 2 value}, only when set)}, a ``Secret`` adds 3 type "".
* A protobuf watch is a sequence of frames: a 4-byte big-endian length, then a ``metav1.WatchEvent``
  message written by the *raw* protobuf serializer — no ``k8s\\0``, no ``runtime.Unknown`` around it —
  {1 type, 2 object: ``RawExtension`` {1 raw: the object as a full ``k8s\\0`` + ``Unknown`` body}}. A
  JSON watch is one ``{"type":...,"object":...}`` line per event.
* A bookmark's object is an empty object of the watched kind carrying only ``metadata.resourceVersion``
  (and the ``k8s.io/initial-events-end: "true"`` annotation at the end of a streaming list's initial
  events); for a metadata-only client it is a ``PartialObjectMetadata``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from apiproxy.protowire import encode_unknown, length_delimited, string_field, varint_field
from apiproxy.status import StatusError

__all__ = [
    "BUILTIN_KINDS",
    "JSON",
    "PROTOBUF",
    "ConcealedKind",
    "Encoding",
    "WatchOptions",
    "bookmark_event",
    "empty_list",
    "kinds_from_discovery",
    "negotiate",
    "not_found",
]

JSON = "application/json"
PROTOBUF = "application/vnd.kubernetes.protobuf"
META_GROUP = "meta.k8s.io"
INITIAL_EVENTS_END = "k8s.io/initial-events-end"

#: Kinds of the core resources a policy would conceal; other resources are looked up in discovery.
BUILTIN_KINDS: Mapping[tuple[str, str], str] = {
    ("", "secrets"): "Secret",
    ("", "configmaps"): "ConfigMap",
    ("", "serviceaccounts"): "ServiceAccount",
    ("", "events"): "Event",
    ("", "endpoints"): "Endpoints",
    ("", "pods"): "Pod",
    ("", "services"): "Service",
    ("", "namespaces"): "Namespace",
    ("", "nodes"): "Node",
    ("", "persistentvolumeclaims"): "PersistentVolumeClaim",
    ("", "persistentvolumes"): "PersistentVolume",
    ("", "podtemplates"): "PodTemplate",
    ("", "replicationcontrollers"): "ReplicationController",
    ("", "resourcequotas"): "ResourceQuota",
    ("", "limitranges"): "LimitRange",
}

#: Fields the Go marshaller writes after ``metadata`` for an otherwise empty object of a kind (all other
#: built-in kinds written here have only maps, pointers or nothing after it).
_PROTO_EMPTY_FIELDS: Mapping[str, bytes] = {"Secret": string_field(3, "")}

#: ``kubectl get`` columns of an empty Table, per kind (name, type, format); Age closes every table.
_TABLE_COLUMNS: Mapping[str, tuple[tuple[str, str, str], ...]] = {
    "Secret": (("Type", "string", ""), ("Data", "string", "")),
    "ConfigMap": (("Data", "string", ""),),
}
_COLUMN_DESCRIPTIONS = {
    "Name": "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name automatically. Name is "
    "primarily intended for creation idempotence and configuration definition. Cannot be updated. More "
    "info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    "Age": "CreationTimestamp is a timestamp representing the server time when this object was created. "
    "It is not guaranteed to be set in happens-before order across separate operations. Clients may not "
    "set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. "
    "Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture"
    "/api-conventions.md#metadata",
}


@dataclass(frozen=True, slots=True)
class ConcealedKind:
    """A concealed resource as the wire names it: ``secrets`` in core ``v1`` is kind ``Secret``."""

    group: str
    version: str
    resource: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return self.kind + "List"


def kinds_from_discovery(document: bytes) -> dict[str, str] | None:
    """resource → kind from a group version's discovery document (an ``APIResourceList``); subresources
    are left out. None when the document is not an ``APIResourceList``."""
    try:
        doc = json.loads(document)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("kind") != "APIResourceList":
        return None
    resources = doc.get("resources")
    if not isinstance(resources, list):
        return None
    out: dict[str, str] = {}
    for entry in resources:
        if not isinstance(entry, dict):
            continue
        name, kind = entry.get("name"), entry.get("kind")
        if isinstance(name, str) and name and "/" not in name and isinstance(kind, str) and kind:
            out[name] = kind
    return out


# ====================================================================== negotiation


@dataclass(frozen=True, slots=True)
class Encoding:
    """How the client wants the answer: JSON or protobuf, of the object itself or a meta.k8s.io form.

    ``form`` is ``object``, ``metadata`` (``PartialObjectMetadata[List]``) or ``table``."""

    media_type: str = JSON
    form: str = "object"
    meta_version: str = "v1"

    @property
    def protobuf(self) -> bool:
        return self.media_type == PROTOBUF

    def content_type(self, *, watch: bool) -> str:
        """The response's ``Content-Type``: kube adds ``;stream=watch`` to every watch but a JSON one."""
        return self.media_type + (";stream=watch" if watch and self.protobuf else "")


def _clauses(accept: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for clause in accept.split(","):
        parts = [p.strip() for p in clause.split(";")]
        if not parts[0]:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for p in parts[1:]:
            key, _, value = p.partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            else:
                params[key] = value
        out.append((parts[0].lower(), params, q))
    # Most preferred first; equal preferences keep the client's order.
    out.sort(key=lambda c: -c[2])
    return out


def negotiate(accept: str | None, *, watch: bool) -> Encoding:
    """Pick what to answer as kube-apiserver would, or raise 406 like it.

    Understood: ``application/json``, ``application/vnd.kubernetes.protobuf``, ``*/*`` and
    ``application/*`` (JSON), each optionally ``;as=PartialObjectMetadata[List]`` or (JSON only)
    ``;as=Table`` with ``g=meta.k8s.io;v=v1|v1beta1``; ``stream=watch`` on a watch. Anything else is
    skipped, so ``Accept: application/yaml`` alone is a 406."""
    if not accept or not accept.strip():
        return Encoding()
    for media, params, q in _clauses(accept):
        if q <= 0:
            continue
        if media in ("*/*", "application/*", JSON):
            media = JSON
        elif media != PROTOBUF:
            continue
        stream = params.pop("stream", None)
        if stream is not None and (not watch or stream != "watch"):
            continue
        as_ = params.get("as")
        if as_ is None:
            if "g" in params or "v" in params:
                continue
            return Encoding(media)
        if params.get("g") != META_GROUP or params.get("v") not in ("v1", "v1beta1"):
            continue
        version = params["v"]
        if as_ in ("PartialObjectMetadata", "PartialObjectMetadataList"):  # kube takes either on both
            return Encoding(media, "metadata", version)
        if as_ == "Table" and media == JSON:
            return Encoding(media, "table", version)
    raise StatusError(
        406,
        f"only the following media types are accepted: {JSON}, {PROTOBUF}",
        reason="NotAcceptable",
    )


# ====================================================================== query


@dataclass(frozen=True, slots=True)
class WatchOptions:
    """The list options that shape a concealed answer (selectors are accepted and change nothing)."""

    allow_bookmarks: bool = False
    send_initial_events: bool | None = None
    resource_version_match: str = ""

    @classmethod
    def from_target(cls, target: str, *, watch: bool) -> WatchOptions:
        """Read them from the forwarded target; raise 422 where kube-apiserver's validation would."""
        query = dict(parse_qsl(target.partition("?")[2], keep_blank_values=True))
        initial = query.get("sendInitialEvents")
        opts = cls(
            allow_bookmarks=_true(query.get("allowWatchBookmarks", "")),
            send_initial_events=None if initial is None else _true(initial),
            resource_version_match=query.get("resourceVersionMatch", ""),
        )
        problem = opts._problem(watch, bool(query.get("resourceVersion")), bool(query.get("continue")))
        if problem:
            raise StatusError(
                422,
                f'ListOptions.meta.k8s.io "" is invalid: {problem}',
                reason="Invalid",
                details={"group": META_GROUP, "kind": "ListOptions", "causes": []},
            )
        return opts

    def _problem(self, watch: bool, has_rv: bool, has_continue: bool) -> str:
        match = self.resource_version_match
        if not watch:
            if self.send_initial_events is not None:
                return "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list"
            if match and not has_rv:
                return (
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless "
                    "resourceVersion is provided"
                )
            if match not in ("", "Exact", "NotOlderThan"):
                return f'resourceVersionMatch: Unsupported value: "{match}"'
            return ""
        if self.send_initial_events is not None and match != "NotOlderThan":
            return (
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
                "resourceVersionMatch to NotOlderThan"
            )
        if match and self.send_initial_events is None:
            return (
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless "
                "sendInitialEvents is provided"
            )
        if match and has_continue:
            return (
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided"
            )
        return ""

    @property
    def initial_events_end(self) -> bool:
        """Whether the stream starts with the bookmark that ends a streaming list's (empty) initial state."""
        return bool(self.send_initial_events) and self.allow_bookmarks


def _true(value: str) -> bool:
    return value.lower() in ("true", "1")


# ====================================================================== protobuf shapes


def list_meta_proto(resource_version: str) -> bytes:
    """``metav1.ListMeta`` {1 selfLink "", 2 resourceVersion, 3 continue ""}."""
    return string_field(1, "") + string_field(2, resource_version) + string_field(3, "")


def object_meta_proto(resource_version: str, annotations: Mapping[str, str] | None = None) -> bytes:
    """``metav1.ObjectMeta`` of an otherwise empty object (see the module doc for the fields written)."""
    out = b"".join(string_field(n, "") for n in (1, 2, 3, 4, 5))
    out += string_field(6, resource_version) + varint_field(7, 0) + length_delimited(8, b"")
    for key in sorted(annotations or {}):
        assert annotations is not None
        out += length_delimited(12, string_field(1, key) + string_field(2, annotations[key]))
    return out


def list_protobuf(kind: ConcealedKind, resource_version: str) -> bytes:
    """An empty ``<Kind>List``: ``k8s\\0`` + Unknown{typeMeta, raw: {1 ListMeta}}; no items field."""
    raw = length_delimited(1, list_meta_proto(resource_version))
    return encode_unknown(kind.api_version, kind.list_kind, raw)


def metadata_list_protobuf(resource_version: str, meta_version: str = "v1") -> bytes:
    """An empty ``PartialObjectMetadataList`` of ``meta.k8s.io/<meta_version>``."""
    raw = length_delimited(1, list_meta_proto(resource_version))
    return encode_unknown(f"{META_GROUP}/{meta_version}", "PartialObjectMetadataList", raw)


def object_protobuf(
    kind: ConcealedKind, resource_version: str, annotations: Mapping[str, str] | None
) -> bytes:
    """An empty object of ``kind`` carrying only a resourceVersion (a bookmark's object)."""
    raw = length_delimited(1, object_meta_proto(resource_version, annotations))
    raw += _PROTO_EMPTY_FIELDS.get(kind.kind, b"") if not kind.group else b""
    return encode_unknown(kind.api_version, kind.kind, raw)


def metadata_object_protobuf(
    resource_version: str, annotations: Mapping[str, str] | None, meta_version: str = "v1"
) -> bytes:
    """A ``PartialObjectMetadata`` carrying only a resourceVersion."""
    raw = length_delimited(1, object_meta_proto(resource_version, annotations))
    return encode_unknown(f"{META_GROUP}/{meta_version}", "PartialObjectMetadata", raw)


def watch_event_frame(event_type: str, object_body: bytes) -> bytes:
    """One protobuf watch frame: 4-byte big-endian length + WatchEvent{1 type, 2 RawExtension{1 raw}}."""
    event = string_field(1, event_type) + length_delimited(2, length_delimited(1, object_body))
    return struct.pack(">I", len(event)) + event


# ====================================================================== JSON shapes


def _json(obj: Any) -> bytes:
    """Go's ``json.Encoder`` output: compact, UTF-8, one trailing newline."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _meta(resource_version: str, annotations: Mapping[str, str] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"resourceVersion": resource_version}
    if annotations:
        meta["annotations"] = dict(sorted(annotations.items()))
    return meta


def list_json(kind: ConcealedKind, resource_version: str) -> bytes:
    return _json(
        {
            "kind": kind.list_kind,
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": resource_version},
            "items": [],
        }
    )


def metadata_list_json(resource_version: str, meta_version: str = "v1") -> bytes:
    return _json(
        {
            "kind": "PartialObjectMetadataList",
            "apiVersion": f"{META_GROUP}/{meta_version}",
            "metadata": {"resourceVersion": resource_version},
            "items": [],
        }
    )


def table_json(kind: ConcealedKind, resource_version: str, meta_version: str = "v1") -> bytes:
    """An empty ``Table``: the columns ``kubectl get`` prints, no rows ("No resources found")."""
    columns = [("Name", "string", "name"), *_TABLE_COLUMNS.get(kind.kind, ()), ("Age", "string", "")]
    return _json(
        {
            "kind": "Table",
            "apiVersion": f"{META_GROUP}/{meta_version}",
            "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": [
                {
                    "name": name,
                    "type": type_,
                    "format": format_,
                    "description": _COLUMN_DESCRIPTIONS.get(name, ""),
                    "priority": 0,
                }
                for name, type_, format_ in columns
            ],
            "rows": [],
        }
    )


def object_json(
    kind: ConcealedKind, resource_version: str, annotations: Mapping[str, str] | None
) -> dict[str, Any]:
    return {
        "kind": kind.kind,
        "apiVersion": kind.api_version,
        "metadata": _meta(resource_version, annotations),
    }


def metadata_object_json(
    resource_version: str, annotations: Mapping[str, str] | None, meta_version: str = "v1"
) -> dict[str, Any]:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"{META_GROUP}/{meta_version}",
        "metadata": _meta(resource_version, annotations),
    }


def watch_event_json(event_type: str, obj: Mapping[str, Any]) -> bytes:
    """One JSON watch event line."""
    return _json({"type": event_type, "object": obj})


# ====================================================================== answers


def empty_list(encoding: Encoding, kind: ConcealedKind, resource_version: str) -> bytes:
    """The body of a concealed LIST in the negotiated encoding."""
    if encoding.form == "table":
        return table_json(kind, resource_version, encoding.meta_version)
    if encoding.form == "metadata":
        if encoding.protobuf:
            return metadata_list_protobuf(resource_version, encoding.meta_version)
        return metadata_list_json(resource_version, encoding.meta_version)
    return list_protobuf(kind, resource_version) if encoding.protobuf else list_json(kind, resource_version)


def bookmark_event(
    encoding: Encoding, kind: ConcealedKind, resource_version: str, *, initial_events_end: bool = False
) -> bytes | None:
    """One BOOKMARK event in the negotiated framing; None for a Table watch (kubectl asks for none)."""
    annotations = {INITIAL_EVENTS_END: "true"} if initial_events_end else None
    if encoding.form == "table":
        return None
    if encoding.protobuf:
        if encoding.form == "metadata":
            body = metadata_object_protobuf(resource_version, annotations, encoding.meta_version)
        else:
            body = object_protobuf(kind, resource_version, annotations)
        return watch_event_frame("BOOKMARK", body)
    if encoding.form == "metadata":
        return watch_event_json(
            "BOOKMARK", metadata_object_json(resource_version, annotations, encoding.meta_version)
        )
    return watch_event_json("BOOKMARK", object_json(kind, resource_version, annotations))


def not_found(group: str, resource: str, name: str) -> StatusError:
    """404 as kube-apiserver words it: ``secrets "x" not found``, details {name, [group], kind}."""
    qualified = f"{resource}.{group}" if group else resource
    details = {"name": name, "group": group, "kind": resource} if group else {"name": name, "kind": resource}
    return StatusError(404, f'{qualified} "{name}" not found', reason="NotFound", details=details)
