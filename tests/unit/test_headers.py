"""Header allowlists: what crosses the proxy, in every spelling."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from apiproxy.proxy.headers import (
    FORWARDED_REQUEST_HEADERS,
    client_response_headers,
    upstream_request_headers,
)
from apiproxy.status import StatusError

SMUGGLED = [
    "Authorization",
    "Impersonate-User",
    "Impersonate-Group",
    "Impersonate-Uid",
    "Impersonate-Extra-Scopes",
    "X-Remote-User",
    "X-Remote-Group",
    "X-Remote-Extra-Foo",
    "Proxy-Authorization",
    "Connection",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Host",
    "Content-Length",
    "X-Forwarded-For",
    "Cookie",
]


def _case_variants(name: str) -> list[str]:
    return [name, name.lower(), name.upper(), name.swapcase()]


@pytest.mark.parametrize("name", [v for n in SMUGGLED for v in _case_variants(n)])
def test_credentials_and_hop_by_hop_headers_never_pass(name: str) -> None:
    value = "close" if name.lower() == "connection" else "attacker"
    out = upstream_request_headers(CIMultiDict([(name, value), ("Accept", "application/json")]))
    assert list(out.keys()) == ["Accept"]


def test_allowlisted_headers_pass_with_their_values() -> None:
    incoming = CIMultiDict(
        [
            ("accept", "application/vnd.kubernetes.protobuf,application/json"),
            ("User-Agent", "pilot-discovery/1.22"),
            ("Audit-Id", "abc"),
            ("Accept-Encoding", "gzip"),
        ]
    )
    out = upstream_request_headers(incoming)
    assert dict(out) == dict(incoming)


@pytest.mark.parametrize(
    "header",
    [
        ("Upgrade", "SPDY/3.1"),
        ("upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("connection", "keep-alive, upgrade"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("x-http-method", "PUT"),
        ("X-Method-Override", "PATCH"),
    ],
)
def test_upgrades_and_method_overrides_are_refused(header: tuple[str, str]) -> None:
    with pytest.raises(StatusError) as err:
        upstream_request_headers(CIMultiDict([header]))
    assert err.value.code == 400


def test_a_forwarded_header_given_twice_is_refused() -> None:
    with pytest.raises(StatusError) as err:
        upstream_request_headers(CIMultiDict([("Accept", "a"), ("accept", "b")]))
    assert err.value.code == 400
    assert "more than once" in err.value.message


@given(
    st.lists(st.tuples(st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,30}", fullmatch=True), st.text(max_size=20)))
)
def test_only_allowlisted_names_ever_come_out(pairs: list[tuple[str, str]]) -> None:
    try:
        out = upstream_request_headers(CIMultiDict(pairs))
    except StatusError:
        return
    assert all(name.lower() in FORWARDED_REQUEST_HEADERS for name in out)


def test_response_headers_keep_content_type_and_repeated_warnings_drop_the_rest() -> None:
    out = client_response_headers(
        [
            ("Content-Type", "application/vnd.kubernetes.protobuf;stream=watch"),
            ("Warning", '299 - "a"'),
            ("Warning", '299 - "b"'),
            ("Set-Cookie", "x=y"),
            ("Transfer-Encoding", "chunked"),
            ("Location", "https://elsewhere/"),
            ("Audit-Id", "1"),
        ]
    )
    assert out.getall("Warning") == ['299 - "a"', '299 - "b"']
    assert out["Content-Type"] == "application/vnd.kubernetes.protobuf;stream=watch"
    assert set(k.lower() for k in out) == {"content-type", "warning", "audit-id"}


@pytest.mark.parametrize("value", ["ua-\xe9", "a\x00b", "line\x7f", "ü"])
def test_forwarded_values_must_be_printable_ascii(value: str) -> None:
    with pytest.raises(StatusError) as err:
        upstream_request_headers(CIMultiDict([("User-Agent", value)]))
    assert err.value.code == 400


def test_headers_named_by_connection_are_hop_by_hop_and_dropped() -> None:
    out = upstream_request_headers(
        CIMultiDict(
            [
                ("Connection", "keep-alive, Accept-Language"),
                ("connection", "user-agent"),
                ("Accept-Language", "hop"),
                ("User-Agent", "hop"),
                ("Accept", "application/json"),
            ]
        )
    )
    assert dict(out) == {"Accept": "application/json"}
