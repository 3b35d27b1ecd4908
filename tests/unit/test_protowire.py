"""The protobuf wire reader/writer: exact against client-go's bytes, strict on everything else."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apiproxy import protowire as pw

FIXTURES = Path(__file__).parent.parent / "fixtures" / "client-go"


@pytest.mark.parametrize(
    ("name", "api_version", "kind"),
    [
        ("tokenreview-v1.pb", "authentication.k8s.io/v1", "TokenReview"),
        ("subjectaccessreview-v1.pb", "authorization.k8s.io/v1", "SubjectAccessReview"),
    ],
)
def test_recorded_client_go_bodies_decode_and_reencode_byte_for_byte(
    name: str, api_version: str, kind: str
) -> None:
    body = (FIXTURES / name).read_bytes()
    unknown = pw.decode_unknown(body)
    assert (unknown.api_version, unknown.kind) == (api_version, kind)
    assert unknown.content_encoding == unknown.content_type == ""
    assert pw.encode_unknown(unknown.api_version, unknown.kind, unknown.raw) == body


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_varint_round_trip(value: int) -> None:
    [field] = pw.fields(pw.varint_field(7, value))
    assert field == pw.Field(7, 0, value)


@given(st.text(max_size=40), st.text(max_size=40), st.binary(max_size=64))
def test_unknown_round_trip(api_version: str, kind: str, inner: bytes) -> None:
    raw = pw.length_delimited(1, inner)  # any bytes become a well-formed message as one field
    decoded = pw.decode_unknown(pw.encode_unknown(api_version, kind, raw))
    assert (decoded.api_version, decoded.kind, decoded.raw) == (api_version, kind, raw)


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    for candidate in (data, pw.K8S_MAGIC + data):
        with contextlib.suppress(pw.WireError):
            pw.decode_unknown(candidate)


def test_a_real_body_cut_anywhere_but_a_field_boundary_is_refused() -> None:
    body = (FIXTURES / "subjectaccessreview-v1.pb").read_bytes()
    boundaries = {len(pw.K8S_MAGIC)}
    offset = len(pw.K8S_MAGIC)
    for field in pw.fields(body[offset:]):
        assert isinstance(field.value, bytes)
        offset += len(pw.length_delimited(field.number, field.value))
        boundaries.add(offset)
    assert offset == len(body)
    for cut in range(len(pw.K8S_MAGIC), len(body)):
        if cut in boundaries:
            pw.decode_unknown(body[:cut])  # fewer fields, still one well-formed envelope
        else:
            with pytest.raises(pw.WireError):
                pw.decode_unknown(body[:cut])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x08\x80", "truncated varint"),
        (b"\x08\x80\x00", "non-canonical"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10"),
        (b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "overflows"),
        (b"\x0a\x05abc", "runs past the end"),
        (b"\x0b", "wire type 3"),
        (b"\x0f", "wire type 7"),
        (b"\x00\x01", "field number out of range"),
        (b"\x09\x01\x02", "truncated fixed-width"),
    ],
)
def test_malformed_wire_is_named(data: bytes, message: str) -> None:
    with pytest.raises(pw.WireError, match=message):
        pw.check_message(data)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{}", "k8s"),
        (pw.K8S_MAGIC + pw.varint_field(1, 1), "wrong wire type"),
        (pw.K8S_MAGIC + pw.length_delimited(9, b""), "unexpected field 9"),
        (pw.K8S_MAGIC + pw.length_delimited(2, b"") * 2, "given twice"),
        (pw.K8S_MAGIC + pw.length_delimited(1, pw.string_field(3, "x")), "typeMeta"),
        (pw.K8S_MAGIC + pw.length_delimited(1, pw.length_delimited(2, b"\xff")), "not UTF-8"),
        (pw.K8S_MAGIC + pw.length_delimited(2, b"\x0a\x09"), "raw|runs past"),
    ],
)
def test_malformed_envelopes_are_named(body: bytes, message: str) -> None:
    with pytest.raises(pw.WireError, match=message):
        pw.decode_unknown(body)


def test_writer_refuses_what_cannot_be_encoded() -> None:
    with pytest.raises(pw.WireError):
        pw.varint(-1)
    with pytest.raises(pw.WireError):
        pw.varint_field(0, 1)
