"""Concealed answers: every wire shape exact, decoded field by field with the strict protobuf reader."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apiproxy import protowire as pw
from apiproxy.proxy import conceal as c
from apiproxy.proxy.upstream import Upstream, UpstreamError, UpstreamSettings
from apiproxy.proxy.upstream_facts import RESOURCE_VERSION_PATH, UpstreamFacts
from apiproxy.simulator import Simulator, seed_mesh
from apiproxy.status import StatusError

SECRETS = c.ConcealedKind("", "v1", "secrets", "Secret")
CONFIGMAPS = c.ConcealedKind("", "v1", "configmaps", "ConfigMap")
WIDGETS = c.ConcealedKind("example.com", "v1beta2", "widgets", "Widget")

METADATA_ACCEPT_LIST = (
    "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,"
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
)
METADATA_ACCEPT_WATCH = (
    "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,"
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
)
KUBECTL_TABLE = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
    "application/json"
)
PB = "application/vnd.kubernetes.protobuf"


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    return [(f.number, f.value) for f in pw.fields(data)]


def the(data: bytes, number: int) -> bytes:
    (value,) = [v for n, v in fields(data) if n == number]
    assert isinstance(value, bytes)
    return value


EMPTY_OBJECT_META = [(1, b""), (2, b""), (3, b""), (4, b""), (5, b"")]

# -- lists -----------------------------------------------------------------------------------------------


def test_empty_list_json_is_exactly_what_kube_apiserver_writes() -> None:
    assert c.list_json(SECRETS, "4711") == (
        b'{"kind":"SecretList","apiVersion":"v1","metadata":{"resourceVersion":"4711"},"items":[]}\n'
    )
    assert json.loads(c.list_json(WIDGETS, "9")) == {
        "kind": "WidgetList",
        "apiVersion": "example.com/v1beta2",
        "metadata": {"resourceVersion": "9"},
        "items": [],
    }


def test_empty_list_protobuf_decodes_field_by_field() -> None:
    body = c.list_protobuf(SECRETS, "4711")
    unknown = pw.decode_unknown(body)
    assert (unknown.api_version, unknown.kind) == ("v1", "SecretList")
    assert (unknown.content_encoding, unknown.content_type) == ("", "")
    # SecretList {1 metadata: ListMeta {1 selfLink "", 2 resourceVersion, 3 continue ""}}, no items.
    assert fields(unknown.raw) == [(1, the(unknown.raw, 1))]
    assert fields(the(unknown.raw, 1)) == [(1, b""), (2, b"4711"), (3, b"")]
    assert body.hex() == (
        "6b387300"  # k8s\0
        "0a100a027631120a5365637265744c697374"  # typeMeta {apiVersion "v1", kind "SecretList"}
        "120c0a0a0a001204343731311a00"  # raw: {1 ListMeta {1 "", 2 "4711", 3 ""}}
        "1a002200"  # contentEncoding "", contentType ""
    )


def test_metadata_only_list_in_json_and_protobuf() -> None:
    assert c.metadata_list_json("12") == (
        b'{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1",'
        b'"metadata":{"resourceVersion":"12"},"items":[]}\n'
    )
    unknown = pw.decode_unknown(c.metadata_list_protobuf("12"))
    assert (unknown.api_version, unknown.kind) == ("meta.k8s.io/v1", "PartialObjectMetadataList")
    assert fields(the(unknown.raw, 1)) == [(1, b""), (2, b"12"), (3, b"")]


def test_empty_table_has_kubectls_columns_and_no_rows() -> None:
    table = json.loads(c.table_json(SECRETS, "5"))
    assert (table["kind"], table["apiVersion"], table["metadata"]) == (
        "Table",
        "meta.k8s.io/v1",
        {"resourceVersion": "5"},
    )
    assert [col["name"] for col in table["columnDefinitions"]] == ["Name", "Type", "Data", "Age"]
    assert table["rows"] == []
    assert [col["name"] for col in json.loads(c.table_json(WIDGETS, "5"))["columnDefinitions"]] == [
        "Name",
        "Age",
    ]


@pytest.mark.parametrize(
    ("encoding", "expected_kind"),
    [
        (c.Encoding(), "SecretList"),
        (c.Encoding(c.PROTOBUF), "SecretList"),
        (c.Encoding(c.JSON, "metadata"), "PartialObjectMetadataList"),
        (c.Encoding(c.PROTOBUF, "metadata"), "PartialObjectMetadataList"),
        (c.Encoding(c.JSON, "table"), "Table"),
    ],
)
def test_empty_list_picks_the_shape_of_the_encoding(encoding: c.Encoding, expected_kind: str) -> None:
    body = c.empty_list(encoding, SECRETS, "77")
    if encoding.protobuf:
        assert pw.decode_unknown(body).kind == expected_kind
    else:
        assert json.loads(body)["kind"] == expected_kind


# -- watch events ----------------------------------------------------------------------------------------


def test_json_bookmarks_are_exact() -> None:
    assert c.bookmark_event(c.Encoding(), SECRETS, "88") == (
        b'{"type":"BOOKMARK","object":{"kind":"Secret","apiVersion":"v1","metadata":{"resourceVersion":"88"}}}\n'
    )
    assert c.bookmark_event(c.Encoding(), CONFIGMAPS, "89", initial_events_end=True) == (
        b'{"type":"BOOKMARK","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":'
        b'{"resourceVersion":"89","annotations":{"k8s.io/initial-events-end":"true"}}}}\n'
    )
    meta = c.bookmark_event(c.Encoding(c.JSON, "metadata"), SECRETS, "90")
    assert meta is not None
    assert json.loads(meta)["object"] == {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": "90"},
    }


def unframe(frame: bytes) -> tuple[str, pw.Unknown]:
    """A protobuf watch frame → (event type, the embedded object's envelope), checking every byte."""
    (length,) = struct.unpack(">I", frame[:4])
    event = frame[4:]
    assert length == len(event)
    assert not event.startswith(pw.K8S_MAGIC)  # the WatchEvent itself is written raw
    assert [n for n, _ in fields(event)] == [1, 2]
    raw_extension = the(event, 2)
    assert [n for n, _ in fields(raw_extension)] == [1]
    return the(event, 1).decode(), pw.decode_unknown(the(raw_extension, 1))


def test_protobuf_bookmark_frame_decodes_field_by_field() -> None:
    frame = c.bookmark_event(c.Encoding(c.PROTOBUF), SECRETS, "4711")
    assert frame is not None
    event_type, obj = unframe(frame)
    assert event_type == "BOOKMARK"
    assert (obj.api_version, obj.kind) == ("v1", "Secret")
    # Secret {1 ObjectMeta, 3 type ""}
    assert [n for n, _ in fields(obj.raw)] == [1, 3] and the(obj.raw, 3) == b""
    assert fields(the(obj.raw, 1)) == [*EMPTY_OBJECT_META, (6, b"4711"), (7, 0), (8, b"")]


def test_protobuf_initial_events_end_bookmark_carries_the_annotation() -> None:
    frame = c.bookmark_event(c.Encoding(c.PROTOBUF), CONFIGMAPS, "5", initial_events_end=True)
    assert frame is not None
    _, obj = unframe(frame)
    assert obj.kind == "ConfigMap" and [n for n, _ in fields(obj.raw)] == [1]
    meta = fields(the(obj.raw, 1))
    assert meta[:8] == [*EMPTY_OBJECT_META, (6, b"5"), (7, 0), (8, b"")]
    (annotation,) = [v for n, v in meta if n == 12]
    assert isinstance(annotation, bytes)
    assert fields(annotation) == [(1, b"k8s.io/initial-events-end"), (2, b"true")]


def test_protobuf_metadata_bookmark_and_group_kinds() -> None:
    frame = c.bookmark_event(c.Encoding(c.PROTOBUF, "metadata"), WIDGETS, "6")
    assert frame is not None
    _, obj = unframe(frame)
    assert (obj.api_version, obj.kind) == ("meta.k8s.io/v1", "PartialObjectMetadata")
    frame = c.bookmark_event(c.Encoding(c.PROTOBUF), WIDGETS, "6")
    assert frame is not None
    _, obj = unframe(frame)
    assert (obj.api_version, obj.kind) == ("example.com/v1beta2", "Widget")
    assert [n for n, _ in fields(obj.raw)] == [1]


def test_table_watches_get_no_bookmarks() -> None:
    assert c.bookmark_event(c.Encoding(c.JSON, "table"), SECRETS, "1") is None


# -- negotiation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "watch", "expected"),
    [
        (None, False, c.Encoding()),
        ("", True, c.Encoding()),
        ("*/*", False, c.Encoding()),
        ("application/*", True, c.Encoding()),
        ("application/json, */*", False, c.Encoding()),
        ("application/vnd.kubernetes.protobuf,application/json", False, c.Encoding(c.PROTOBUF)),
        ("application/vnd.kubernetes.protobuf, application/json", True, c.Encoding(c.PROTOBUF)),
        ("application/json;q=0.5,application/vnd.kubernetes.protobuf", False, c.Encoding(c.PROTOBUF)),
        ("application/vnd.kubernetes.protobuf;q=0,application/json", False, c.Encoding()),
        ("application/yaml,application/json", False, c.Encoding()),
        ("application/json;stream=watch", True, c.Encoding()),
        ("application/json;stream=watch,application/vnd.kubernetes.protobuf", False, c.Encoding(c.PROTOBUF)),
        (METADATA_ACCEPT_LIST, False, c.Encoding(c.PROTOBUF, "metadata")),
        (METADATA_ACCEPT_WATCH, True, c.Encoding(c.PROTOBUF, "metadata")),
        (METADATA_ACCEPT_LIST.split(",", 1)[1], False, c.Encoding(c.JSON, "metadata")),
        (KUBECTL_TABLE, False, c.Encoding(c.JSON, "table")),
        ("application/json;as=Table;v=v1beta1;g=meta.k8s.io", False, c.Encoding(c.JSON, "table", "v1beta1")),
        (f"{PB};as=Table;v=v1;g=meta.k8s.io,application/json", False, c.Encoding()),
        ("application/json;as=Table;v=v2;g=meta.k8s.io,application/json", False, c.Encoding()),
        ("application/json;as=APIGroupDiscoveryList;v=v2;g=apidiscovery.k8s.io,*/*", False, c.Encoding()),
    ],
)  # fmt: skip
def test_negotiate(accept: str | None, watch: bool, expected: c.Encoding) -> None:
    assert c.negotiate(accept, watch=watch) == expected


@pytest.mark.parametrize(
    "accept",
    [
        "application/yaml",
        "text/html",
        "application/json;q=0",
        "application/json;stream=watch",  # not a watch
        "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io",
        "application/json;as=Table;v=v1;g=example.com",
        "application/cbor",
    ],
)
def test_negotiate_refuses_with_406_like_the_apiserver(accept: str) -> None:
    with pytest.raises(StatusError) as caught:
        c.negotiate(accept, watch=False)
    assert (caught.value.code, caught.value.reason) == (406, "NotAcceptable")
    assert caught.value.message == (
        "only the following media types are accepted: application/json, application/vnd.kubernetes.protobuf"
    )


def test_content_types() -> None:
    assert (
        c.Encoding(c.PROTOBUF).content_type(watch=True) == "application/vnd.kubernetes.protobuf;stream=watch"
    )
    assert c.Encoding(c.PROTOBUF).content_type(watch=False) == "application/vnd.kubernetes.protobuf"
    assert c.Encoding().content_type(watch=True) == "application/json"


# -- options, 404, discovery -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "watch", "expected"),
    [
        ("/api/v1/secrets?watch=1", True, c.WatchOptions()),
        ("/api/v1/secrets?watch=1&allowWatchBookmarks=true", True, c.WatchOptions(allow_bookmarks=True)),
        (
            "/api/v1/secrets?watch=1&allowWatchBookmarks=true&sendInitialEvents=true"
            "&resourceVersionMatch=NotOlderThan&labelSelector=a%3Db&fieldSelector=type%21%3Dx",
            True,
            c.WatchOptions(True, True, "NotOlderThan"),
        ),
        ("/api/v1/secrets?limit=500&resourceVersion=0&resourceVersionMatch=NotOlderThan", False,
         c.WatchOptions(resource_version_match="NotOlderThan")),
    ],
)  # fmt: skip
def test_watch_options(target: str, watch: bool, expected: c.WatchOptions) -> None:
    assert c.WatchOptions.from_target(target, watch=watch) == expected


def test_initial_events_end_needs_initial_events_and_bookmarks() -> None:
    assert c.WatchOptions(True, True, "NotOlderThan").initial_events_end
    assert not c.WatchOptions(False, True, "NotOlderThan").initial_events_end
    assert not c.WatchOptions(True, False, "NotOlderThan").initial_events_end


@pytest.mark.parametrize(
    ("target", "watch", "problem"),
    [
        ("/api/v1/secrets?watch=1&sendInitialEvents=true", True, "sendInitialEvents requires setting"),
        ("/api/v1/secrets?watch=1&resourceVersionMatch=NotOlderThan", True, "forbidden for watch unless"),
        ("/api/v1/secrets?sendInitialEvents=true", False, "sendInitialEvents is forbidden for list"),
        ("/api/v1/secrets?resourceVersionMatch=Exact", False, "forbidden unless resourceVersion is provided"),
        (
            "/api/v1/secrets?resourceVersion=1&resourceVersionMatch=Newest",
            False,
            'Unsupported value: "Newest"',
        ),
    ],
)
def test_invalid_list_options_are_422_like_the_apiserver(target: str, watch: bool, problem: str) -> None:
    with pytest.raises(StatusError) as caught:
        c.WatchOptions.from_target(target, watch=watch)
    assert (caught.value.code, caught.value.reason) == (422, "Invalid")
    assert caught.value.message.startswith('ListOptions.meta.k8s.io "" is invalid: ')
    assert problem in caught.value.message


def test_not_found_is_worded_as_kube_apiserver_words_it() -> None:
    core = c.not_found("", "secrets", "x")
    assert (core.code, core.reason, core.message) == (404, "NotFound", 'secrets "x" not found')
    assert core.details == {"name": "x", "kind": "secrets"}
    grouped = c.not_found("example.com", "widgets", "w")
    assert grouped.message == 'widgets.example.com "w" not found'
    assert grouped.details == {"name": "w", "group": "example.com", "kind": "widgets"}


def test_kinds_from_discovery() -> None:
    doc = {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "example.com/v1",
        "resources": [
            {"name": "widgets", "kind": "Widget", "namespaced": True, "verbs": ["list"]},
            {"name": "widgets/status", "kind": "Widget", "namespaced": True, "verbs": ["get"]},
            {"name": "gadgets", "kind": "", "namespaced": True, "verbs": ["list"]},
            "junk",
        ],
    }
    assert c.kinds_from_discovery(json.dumps(doc).encode()) == {"widgets": "Widget"}
    assert c.kinds_from_discovery(b"not json") is None
    assert c.kinds_from_discovery(b'{"kind":"Status"}') is None
    assert c.kinds_from_discovery(b'{"kind":"APIResourceList","resources":{}}') is None


# -- the apiserver facts a concealed answer needs, read from a real (simulated) apiserver -------------------


class FakeClock:
    """A clock the test moves by hand, so cache expiry is decided without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def apiserver(tmp_path: Path) -> AsyncIterator[tuple[Simulator, Upstream]]:
    sim = Simulator(tokens={"sa-token"})
    seed_mesh(sim.store, pods=2, services=1, namespaces=1)
    await sim.start()
    token_file = tmp_path / "token"
    token_file.write_text("sa-token")
    upstream = Upstream(UpstreamSettings(url=sim.url, ca_file=None, token_file=token_file))
    await upstream.start()
    try:
        yield sim, upstream
    finally:
        await upstream.close()
        await sim.stop()


def reads(sim: Simulator, path: str) -> int:
    return sum(1 for r in sim.requests if r.raw_target == path)


async def test_resource_version_is_read_once_per_ttl(apiserver: tuple[Simulator, Upstream]) -> None:
    sim, upstream = apiserver
    clock = FakeClock()
    facts = UpstreamFacts(upstream, ttl=1.0, clock=clock)
    first = await facts.resource_version()
    assert first == str(sim.store.resource_version)
    sim.store.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "n", "namespace": "default"}}
    )
    clock.now += 0.5
    assert await facts.resource_version() == first  # cached: a burst costs one read
    assert reads(sim, RESOURCE_VERSION_PATH) == 1
    clock.now += 0.6
    assert await facts.resource_version() == str(sim.store.resource_version) != first
    assert reads(sim, RESOURCE_VERSION_PATH) == 2 == facts.version_reads


async def test_a_failed_read_is_a_503_remembered_for_the_ttl(apiserver: tuple[Simulator, Upstream]) -> None:
    sim, upstream = apiserver
    clock = FakeClock()
    facts = UpstreamFacts(upstream, ttl=1.0, clock=clock)
    sim.tokens.clear()
    for _ in range(3):
        with pytest.raises(UpstreamError) as caught:
            await facts.resource_version()
        assert caught.value.code == 503 and "answered 401" in caught.value.message
    assert facts.version_reads == 1  # the failure is not retried by every request of a burst
    sim.tokens.add("sa-token")
    clock.now += 1.0
    assert await facts.resource_version() == str(sim.store.resource_version)


async def test_kinds_are_built_in_or_discovered_once(apiserver: tuple[Simulator, Upstream]) -> None:
    sim, upstream = apiserver
    facts = UpstreamFacts(upstream)
    assert await facts.kind("", "v1", "secrets") == SECRETS
    assert sim.requests == []  # built in: nothing read
    for _ in range(2):
        kind = await facts.kind("discovery.k8s.io", "v1", "endpointslices")
        assert kind == c.ConcealedKind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
    assert reads(sim, "/apis/discovery.k8s.io/v1") == 1
    for group, version, resource in [
        ("discovery.k8s.io", "v1", "widgets"),  # the group version does not serve it
        ("example.com", "v1", "widgets"),  # the group version does not exist (upstream 404)
        ("", "v2", "secrets"),  # the core group only ever served v1: not even asked
    ]:
        with pytest.raises(StatusError) as caught:
            await facts.kind(group, version, resource)
        assert (caught.value.code, caught.value.reason) == (404, "NotFound")
    assert not [r for r in sim.requests if r.raw_target.startswith("/api/v2")]
