"""reviews.check_review_body: the body of an allowed review POST must be what its URL says."""

# ruff: noqa: E501  (the case table reads best one case per line)
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiproxy import protowire as pw
from apiproxy.policy.requestinfo import classify
from apiproxy.policy.reviews import ReviewBodyError, check_review_body, review_media_type

TR = "/apis/authentication.k8s.io/v1/tokenreviews"
SAR = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
PB = "application/vnd.kubernetes.protobuf"
CLIENT_GO = Path(__file__).resolve().parents[1] / "fixtures" / "client-go"
#: Bodies a client-go clientset with ``ContentType: application/vnd.kubernetes.protobuf`` sent.
RECORDED_TR = (CLIENT_GO / "tokenreview-v1.pb").read_bytes()
RECORDED_SAR = (CLIENT_GO / "subjectaccessreview-v1.pb").read_bytes()
TR_RAW = pw.decode_unknown(RECORDED_TR).raw


def body(**doc: object) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("target", "payload"),
    [
        (TR, body(apiVersion="authentication.k8s.io/v1", kind="TokenReview", spec={"token": "x"})),
        (
            "/apis/authentication.k8s.io/v1beta1/tokenreviews",
            body(apiVersion="authentication.k8s.io/v1beta1", kind="TokenReview"),
        ),
        (SAR, body(apiVersion="authorization.k8s.io/v1", kind="SubjectAccessReview", spec={"user": "u"})),
    ],
)
def test_accepted(target: str, payload: bytes) -> None:
    check_review_body(classify("POST", target), payload)


@pytest.mark.parametrize(
    ("target", "payload", "code", "message"),
    [
        (TR, body(apiVersion="authentication.k8s.io/v1beta1", kind="TokenReview"), 400, "expected"),
        (TR, body(apiVersion="authorization.k8s.io/v1", kind="SubjectAccessReview"), 400, "apiVersion"),
        (TR, body(apiVersion="authentication.k8s.io/v1", kind="SubjectAccessReview"), 400, "kind"),
        (TR, body(apiVersion="authentication.k8s.io/v1"), 400, "kind"),
        (TR, body(apiVersion="authentication.k8s.io/v1", kind="TokenReview", Kind="Secret"), 400, "exactly"),
        (TR, b'{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","kind":"Secret"}', 400, "duplicate"),
        (TR, b'{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","x":NaN}', 400, "NaN"),
        (TR, b"[]", 400, "object"),
        (TR, b"", 400, "empty"),
        (TR, b"not json", 400, "not valid JSON"),
        (TR, b"\xff\xfe", 415, "UTF-8"),
        (TR, b"k8s\x00\x0a\x0b", 415, "protobuf but Content-Type is application/json"),
        (TR, b'{"a":1,"a":2}', 400, "duplicate key 'a'"),
        (TR, b'{"' + b"k" * 200 + b'":1,"' + b"k" * 200 + b'":2}', 400, "a duplicate key"),
        (TR, b"[" * 100_000 + b"]" * 100_000, 413, "larger"),
        (TR, b'{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","p":"' + b"a" * 70000 + b'"}', 413, "larger"),
        ("/apis/authorization.k8s.io/v1/namespaces/x/localsubjectaccessreviews", b"{}", 400, "not a review"),
        ("/apis/authentication.k8s.io/v1/namespaces/x/tokenreviews", b"{}", 400, "cluster-scoped"),
        ("/apis/authentication.k8s.io/v2/tokenreviews", b"{}", 400, "version"),
        ("/api/v1/namespaces/x/pods", b"{}", 400, "not a review"),
    ],
)  # fmt: skip
def test_refused(target: str, payload: bytes, code: int, message: str) -> None:
    with pytest.raises(ReviewBodyError) as excinfo:
        check_review_body(classify("POST", target), payload)
    assert excinfo.value.code == code
    assert message in excinfo.value.message


def test_deep_nesting_is_a_400_not_a_crash() -> None:
    with pytest.raises(ReviewBodyError) as excinfo:
        check_review_body(classify("POST", TR), b"[" * 30_000 + b"]" * 30_000)
    assert excinfo.value.code == 400


def test_get_is_not_a_review() -> None:
    with pytest.raises(ReviewBodyError):
        check_review_body(classify("GET", "/apis/authentication.k8s.io/v1/tokenreviews/x"), b"{}")


def test_max_bytes_is_configurable() -> None:
    payload = body(apiVersion="authentication.k8s.io/v1", kind="TokenReview")
    check_review_body(classify("POST", TR), payload, max_bytes=len(payload))
    with pytest.raises(ReviewBodyError):
        check_review_body(classify("POST", TR), payload, max_bytes=len(payload) - 1)


# --- media types ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "media_type"),
    [
        (None, "application/json"),  # no Content-Type: JSON, as kube-apiserver decides
        ("", "application/json"),
        ("application/json", "application/json"),
        ("application/json; charset=utf-8", "application/json"),
        ("Application/JSON", "application/json"),
        (PB, PB),
        ("application/vnd.kubernetes.protobuf;stream=watch", PB),
        (" APPLICATION/VND.KUBERNETES.PROTOBUF ", PB),
        ("application/json;", "application/json"),  # a trailing semicolon is no error
        ('application/json; x="a;b=c"; y=1', "application/json"),
        ('application/json; charset=utf-8; Charset="utf-8"', "application/json"),  # repeated, equal
    ],
)
def test_media_type_negotiation(header: str | None, media_type: str) -> None:
    assert review_media_type(header) == media_type


@pytest.mark.parametrize(
    "header",
    [
        "application/yaml",
        "application/cbor",
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/json-patch+json",
        "application/vnd.kubernetes.protobuf+json",
        "json",
        "application/json garbage",
        "\x00",
        " ",  # present but empty: no media type
        "application/json; charset",
        "application/json; charset=",
        "application/json;;",
        'application/json; x="unterminated',
        "application/json; charset=utf-8; charset=utf-16",
        "application/json, application/vnd.kubernetes.protobuf",
    ],
)
def test_other_media_types_are_415_naming_the_supported_ones(header: str) -> None:
    payload = body(apiVersion="authentication.k8s.io/v1", kind="TokenReview")
    with pytest.raises(ReviewBodyError) as excinfo:
        check_review_body(classify("POST", TR), payload, content_type=header)
    assert excinfo.value.code == 415
    assert "application/json, application/vnd.kubernetes.protobuf" in excinfo.value.message
    assert "\x00" not in excinfo.value.message


# --- protobuf bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "payload"), [(TR, RECORDED_TR), (SAR, RECORDED_SAR)])
def test_recorded_client_go_protobuf_bodies_are_accepted(target: str, payload: bytes) -> None:
    before = bytes(payload)
    check_review_body(classify("POST", target), payload, content_type=PB)
    check_review_body(classify("POST", target), payload, content_type=PB + "; charset=binary")
    assert payload == before


def envelope(
    type_meta: bytes = pw.string_field(1, "authentication.k8s.io/v1") + pw.string_field(2, "TokenReview"),
    raw: bytes = TR_RAW,
    rest: bytes = pw.length_delimited(3, b"") + pw.length_delimited(4, b""),
) -> bytes:
    """A protobuf TokenReview body built field by field (the recorded one by default)."""
    return pw.K8S_MAGIC + pw.length_delimited(1, type_meta) + pw.length_delimited(2, raw) + rest


def test_the_builder_reproduces_the_recorded_body() -> None:
    assert envelope() == RECORDED_TR
    check_review_body(
        classify("POST", TR),
        pw.encode_unknown("authentication.k8s.io/v1", "TokenReview", b""),
        content_type=PB,
    )
    check_review_body(
        classify("POST", TR), envelope(rest=pw.length_delimited(4, PB.encode())), content_type=PB
    )


@pytest.mark.parametrize(
    ("target", "payload", "code", "message"),
    [
        (TR, pw.encode_unknown("authentication.k8s.io/v1", "SubjectAccessReview", TR_RAW), 400, "kind 'SubjectAccessReview', expected 'TokenReview'"),
        (TR, pw.encode_unknown("authentication.k8s.io/v1", "tokenreview", TR_RAW), 400, "expected 'TokenReview'"),
        (TR, pw.encode_unknown("authentication.k8s.io/v1", "", TR_RAW), 400, "kind '', expected"),
        (TR, pw.encode_unknown("authentication.k8s.io/v1beta1", "TokenReview", TR_RAW), 400, "apiVersion 'authentication.k8s.io/v1beta1'"),
        (TR, pw.encode_unknown("", "TokenReview", TR_RAW), 400, "apiVersion"),
        (SAR, RECORDED_TR, 400, "apiVersion 'authentication.k8s.io/v1'"),
        (TR, RECORDED_SAR, 400, "apiVersion"),
        (TR, envelope(type_meta=b""), 400, "apiVersion ''"),
        (TR, RECORDED_TR + b"\x00", 400, "field number out of range"),
        (TR, RECORDED_TR + b"\x12", 400, "truncated varint"),
        (TR, RECORDED_TR + b"\x12\x05ab", 400, "runs past the end"),
        (TR, RECORDED_TR[:-1], 400, "truncated varint"),
        (TR, RECORDED_TR[:40], 400, "runs past the end"),
        (TR, pw.K8S_MAGIC + b"\x0a\xff", 400, "truncated varint"),
        (TR, pw.K8S_MAGIC + b"\x0a\x80\x00", 400, "non-canonical varint"),
        (TR, pw.K8S_MAGIC + b"\x0a" + b"\xff" * 11, 400, "longer than 10 bytes"),
        (TR, envelope(rest=pw.string_field(3, "gzip")), 400, "contentEncoding 'gzip'"),
        (TR, envelope(rest=pw.string_field(3, "\x1b[31m")), 400, "contentEncoding (not shown)"),
        (TR, envelope(rest=pw.string_field(4, "application/json")), 400, "contentType 'application/json'"),
        (TR, envelope(rest=pw.varint_field(3, 0)), 400, "wrong wire type"),
        (TR, envelope(rest=pw.length_delimited(5, b"")), 400, "unexpected field 5"),
        (TR, envelope(rest=b"\x0b"), 400, "wire type 3"),  # field 1, a group
        (TR, envelope(rest=b"\x1c"), 400, "wire type 4"),
        (TR, envelope(rest=b"\x1e"), 400, "wire type 6"),
        (TR, envelope(rest=b"\x1f"), 400, "wire type 7"),
        (TR, envelope(rest=pw.length_delimited(1, b"")), 400, "given twice"),
        (TR, envelope(type_meta=pw.string_field(2, "TokenReview") + pw.string_field(2, "Secret")), 400, "typeMeta given twice"),
        (TR, envelope(type_meta=pw.varint_field(1, 1)), 400, "typeMeta"),
        (TR, envelope(type_meta=pw.length_delimited(2, b"\xff")), 400, "not UTF-8"),
        (TR, envelope(raw=TR_RAW + b"\x08"), 400, "truncated varint"),  # raw's own trailing bytes
        (TR, envelope(raw=b"\x0a\x05abc"), 400, "runs past the end"),
        (TR, envelope(raw=b"\x00"), 400, "field number out of range"),
        (TR, envelope(raw=b"\x0f"), 400, "wire type 7"),
        (TR, envelope(raw=b"\x09\x00"), 400, "truncated fixed-width"),
        (TR, pw.K8S_MAGIC, 400, "empty after the protobuf magic"),
        (TR, b"", 400, "empty"),
        (TR, b"k8s", 400, "magic"),
        (TR, b"\x0a\x27", 400, "magic"),
        (TR, body(apiVersion="authentication.k8s.io/v1", kind="TokenReview"), 415, "JSON but Content-Type is application/vnd.kubernetes.protobuf"),
        (TR, b"  [1]", 415, "JSON but"),
        (TR, envelope(raw=b"\x0a\x03" + b"x" * 3 + b"\x12\x00" * 40000), 413, "larger than 65536"),
    ],
)  # fmt: skip
def test_protobuf_refused(target: str, payload: bytes, code: int, message: str) -> None:
    with pytest.raises(ReviewBodyError) as excinfo:
        check_review_body(classify("POST", target), payload, content_type=PB)
    assert excinfo.value.code == code, excinfo.value.message
    assert message in excinfo.value.message


def test_protobuf_size_cap_is_the_same_as_json() -> None:
    check_review_body(classify("POST", TR), RECORDED_TR, max_bytes=len(RECORDED_TR), content_type=PB)
    with pytest.raises(ReviewBodyError) as excinfo:
        check_review_body(classify("POST", TR), RECORDED_TR, max_bytes=len(RECORDED_TR) - 1, content_type=PB)
    assert excinfo.value.code == 413


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_mutated_recorded_bodies_are_accepted_or_refused_never_crash(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from([RECORDED_TR, RECORDED_SAR]))
    position = data.draw(st.integers(min_value=0, max_value=len(original)))
    mutation = data.draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
    byte = bytes([data.draw(st.integers(min_value=0, max_value=255))])
    if mutation == "replace":
        mutated = original[:position] + byte + original[position + 1 :]
    elif mutation == "insert":
        mutated = original[:position] + byte + original[position:]
    elif mutation == "delete":
        mutated = original[:position] + original[position + 1 :]
    else:
        mutated = original[:position]
    target = TR if original is RECORDED_TR else SAR
    try:
        check_review_body(classify("POST", target), mutated, content_type=PB)
    except ReviewBodyError as exc:
        assert exc.code in (400, 415)
    else:
        # Whatever passes still says, in a well-formed envelope, exactly what the URL says.
        unknown = pw.decode_unknown(mutated)
        assert unknown.api_version == pw.decode_unknown(original).api_version
        assert unknown.kind == pw.decode_unknown(original).kind
        assert unknown.content_encoding == ""
