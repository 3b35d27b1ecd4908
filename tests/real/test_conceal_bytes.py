"""The proxy's concealed answers against the real apiserver's own: an empty list and an initial-events-end
bookmark, asked of the apiserver (as admin) in a namespace that holds no Secret, must be what the proxy's
encoders write for the same resourceVersion, byte for byte, in JSON and in protobuf."""

from __future__ import annotations

import json
import struct

import pytest

from apiproxy import protowire as pw
from apiproxy.proxy import conceal
from tests.real.conftest import Real

SECRET = conceal.ConcealedKind("", "v1", "secrets", "Secret")
PROTOBUF = "application/vnd.kubernetes.protobuf"
EMPTY_NS = "conceal-bytes-empty"


@pytest.fixture(scope="module")
def empty_namespace(real: Real) -> str:
    real.cluster.kubectl("create", "namespace", EMPTY_NS, check=False)
    return EMPTY_NS


def list_rv(real: Real, namespace: str) -> str:
    status, _, body = real.cluster.request(
        "GET", f"/api/v1/namespaces/{namespace}/secrets", headers={"Accept": "application/json"}
    )
    assert status == 200
    doc = json.loads(body)
    assert doc["items"] == []
    rv: str = doc["metadata"]["resourceVersion"]
    return rv


def test_empty_list_bytes_match_the_apiserver(real: Real, empty_namespace: str) -> None:
    rv = list_rv(real, empty_namespace)
    target = f"/api/v1/namespaces/{empty_namespace}/secrets?resourceVersion={rv}&resourceVersionMatch=Exact"
    status, headers, as_json = real.cluster.request("GET", target, headers={"Accept": "application/json"})
    assert status == 200
    assert as_json == conceal.list_json(SECRET, rv)
    status, headers, as_proto = real.cluster.request("GET", target, headers={"Accept": PROTOBUF})
    assert status == 200 and headers["content-type"] == PROTOBUF
    assert as_proto == conceal.list_protobuf(SECRET, rv)


@pytest.mark.parametrize("accept", ["application/json", PROTOBUF])
def test_initial_events_end_bookmark_matches_the_apiserver(
    real: Real, empty_namespace: str, accept: str
) -> None:
    target = (
        f"/api/v1/namespaces/{empty_namespace}/secrets?watch=true&sendInitialEvents=true"
        "&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1"
    )
    status, _, body = real.cluster.request("GET", target, headers={"Accept": accept})
    assert status == 200
    if accept == PROTOBUF:
        size = struct.unpack(">I", body[:4])[0]
        first = body[: 4 + size]
        rv = _rv_from_protobuf_bookmark(first)
    else:
        first = body.split(b"\n", 1)[0] + b"\n"
        rv = json.loads(first)["object"]["metadata"]["resourceVersion"]
    encoding = conceal.negotiate(accept, watch=True)
    expected = conceal.bookmark_event(encoding, SECRET, rv, initial_events_end=True)
    assert first == expected


def _field(message: bytes, number: int) -> bytes:
    value = next(f.value for f in pw.fields(message) if f.number == number)
    assert isinstance(value, bytes)
    return value


def _rv_from_protobuf_bookmark(frame: bytes) -> str:
    """WatchEvent{1 type, 2 RawExtension{1 raw: Unknown{Secret{1 ObjectMeta{6 resourceVersion}}}}}."""
    event = frame[4:]
    assert _field(event, 1) == b"BOOKMARK"
    secret = pw.decode_unknown(_field(_field(event, 2), 1))
    return _field(_field(secret.raw, 1), 6).decode()
