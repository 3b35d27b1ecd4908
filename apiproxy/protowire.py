"""The protobuf wire format, as much of it as the proxy needs to read and write Kubernetes envelopes.

kube-apiserver speaks ``application/vnd.kubernetes.protobuf``: every body starts with the 4-byte magic
``k8s\\0`` followed by a ``runtime.Unknown`` message (field 1 ``typeMeta`` {1 ``apiVersion``, 2 ``kind``},
field 2 ``raw`` — the object's own message —, 3 ``contentEncoding``, 4 ``contentType``). The proxy never
needs the generated Kubernetes types: it checks that a review body is what its URL says (reading the
envelope and proving the rest is well-formed wire format) and writes a few tiny objects of its own (an
empty list, a bookmark). Both directions live here, schema-less and strict, so the parsing rules are in
one place and can be tested exhaustively.

Strict means: varints at most 10 bytes and canonical in length (no redundant ``0x80`` continuation
bytes), field numbers 1 … 2**29-1, only wire types 0 (varint), 1 (64-bit), 2 (length-delimited) and
5 (32-bit) — groups (3, 4) are long deprecated and nothing in Kubernetes uses them —, no length running
past the end, and nothing trailing. Every failure is a :class:`WireError`; nothing else escapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "K8S_MAGIC",
    "Field",
    "Unknown",
    "WireError",
    "check_message",
    "decode_unknown",
    "encode_unknown",
    "fields",
    "length_delimited",
    "string_field",
    "varint",
    "varint_field",
]

#: The prefix of every protobuf body kube-apiserver reads or writes.
K8S_MAGIC = b"k8s\x00"

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
_MAX_FIELD = (1 << 29) - 1


class WireError(ValueError):
    """The bytes are not well-formed protobuf wire format (or not the envelope we expected)."""


@dataclass(frozen=True, slots=True)
class Field:
    """One field as it appears on the wire: ``value`` is an int for varints, else the raw bytes."""

    number: int
    wire_type: int
    value: int | bytes


@dataclass(frozen=True, slots=True)
class Unknown:
    """A ``runtime.Unknown``: the envelope around every Kubernetes protobuf object."""

    api_version: str
    kind: str
    raw: bytes
    content_encoding: str = ""
    content_type: str = ""


# -- writing ----------------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """Encode a non-negative integer (< 2**64) as a base-128 varint."""
    if value < 0 or value >= 1 << 64:
        raise WireError(f"varint out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    if not 1 <= number <= _MAX_FIELD:
        raise WireError(f"field number out of range: {number}")
    return varint(number << 3 | wire_type)


def varint_field(number: int, value: int) -> bytes:
    return _tag(number, VARINT) + varint(value)


def length_delimited(number: int, data: bytes) -> bytes:
    """A bytes, string or embedded-message field."""
    return _tag(number, LENGTH_DELIMITED) + varint(len(data)) + data


def string_field(number: int, text: str) -> bytes:
    return length_delimited(number, text.encode("utf-8"))


def encode_unknown(api_version: str, kind: str, raw: bytes) -> bytes:
    """``k8s\\0`` + ``runtime.Unknown`` wrapping ``raw``, exactly as kube-apiserver frames an object.

    Empty strings are omitted, as Go's generated marshaller omits them; ``contentEncoding`` and
    ``contentType`` are always empty (written as empty fields, as kube writes them)."""
    type_meta = (string_field(1, api_version) if api_version else b"") + (
        string_field(2, kind) if kind else b""
    )
    return (
        K8S_MAGIC
        + length_delimited(1, type_meta)
        + length_delimited(2, raw)
        + length_delimited(3, b"")
        + length_delimited(4, b"")
    )


# -- reading ----------------------------------------------------------------------------------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for index in range(10):
        if pos + index >= len(data):
            raise WireError("truncated varint")
        byte = data[pos + index]
        result |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            if index and byte == 0:
                raise WireError("non-canonical varint (redundant continuation bytes)")
            if result >= 1 << 64:
                raise WireError("varint overflows 64 bits")
            return result, pos + index + 1
    raise WireError("varint longer than 10 bytes")


def fields(data: bytes) -> Iterator[Field]:
    """Yield the fields of one message, strictly; raise :class:`WireError` at the first bad byte."""
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if not 1 <= number <= _MAX_FIELD:
            raise WireError(f"field number out of range: {number}")
        if wire_type == VARINT:
            value, pos = _read_varint(data, pos)
            yield Field(number, wire_type, value)
        elif wire_type == LENGTH_DELIMITED:
            length, pos = _read_varint(data, pos)
            if length > end - pos:
                raise WireError(f"field {number}: length {length} runs past the end")
            yield Field(number, wire_type, data[pos : pos + length])
            pos += length
        elif wire_type in (FIXED64, FIXED32):
            size = 8 if wire_type == FIXED64 else 4
            if size > end - pos:
                raise WireError(f"field {number}: truncated fixed-width value")
            yield Field(number, wire_type, data[pos : pos + size])
            pos += size
        else:
            raise WireError(f"field {number}: unsupported wire type {wire_type}")


def check_message(data: bytes) -> None:
    """Prove ``data`` is one well-formed message without knowing its schema.

    A length-delimited field may be a string, bytes or a nested message; without the schema we cannot
    tell which, so its contents are not walked. The message's own structure (every tag, length and
    fixed-width value, nothing trailing) must be exact."""
    for _ in fields(data):
        pass


def decode_unknown(body: bytes) -> Unknown:
    """Parse ``k8s\\0`` + ``runtime.Unknown``; each known field at most once and of the right wire type.

    The object inside (``raw``) is checked to be a well-formed message too."""
    if not body.startswith(K8S_MAGIC):
        raise WireError("missing the k8s\\0 protobuf prefix")
    seen: dict[int, Field] = {}
    for item in fields(body[len(K8S_MAGIC) :]):
        if item.number not in (1, 2, 3, 4):
            raise WireError(f"unexpected field {item.number} in runtime.Unknown")
        if item.wire_type != LENGTH_DELIMITED:
            raise WireError(f"field {item.number} of runtime.Unknown has the wrong wire type")
        if item.number in seen:
            raise WireError(f"field {item.number} of runtime.Unknown given twice")
        seen[item.number] = item
    api_version = kind = ""
    if 1 in seen:
        type_fields: dict[int, str] = {}
        for item in fields(_bytes(seen[1])):
            if item.number not in (1, 2) or item.wire_type != LENGTH_DELIMITED:
                raise WireError(f"unexpected field {item.number} in typeMeta")
            if item.number in type_fields:
                raise WireError(f"field {item.number} of typeMeta given twice")
            type_fields[item.number] = _text(item)
        api_version, kind = type_fields.get(1, ""), type_fields.get(2, "")
    raw = _bytes(seen[2]) if 2 in seen else b""
    check_message(raw)
    return Unknown(
        api_version,
        kind,
        raw,
        _text(seen[3]) if 3 in seen else "",
        _text(seen[4]) if 4 in seen else "",
    )


def _bytes(item: Field) -> bytes:
    assert isinstance(item.value, bytes)
    return item.value


def _text(item: Field) -> str:
    try:
        return _bytes(item).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"field {item.number} is not UTF-8") from exc
