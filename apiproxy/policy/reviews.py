"""Check the body of an allowed review POST before it is forwarded.

The only POSTs a policy may allow are ``authentication.k8s.io`` ``tokenreviews`` and
``authorization.k8s.io`` ``subjectaccessreviews`` (cluster-scoped; ``localsubjectaccessreviews`` are
namespaced and out of scope). They persist nothing, but the body still has to be what the URL says, so a
policy decision about a TokenReview cannot be turned into something else by the body:

* at most ``max_bytes`` (64 KiB by default: a TokenReview carries one JWT, a SubjectAccessReview a user,
  groups and attributes);
* in one of the two media types kube-apiserver decodes for these clients, chosen by ``Content-Type`` as
  kube-apiserver chooses it (media type only, parameters ignored, case-insensitive; no header means JSON):

  - ``application/json``: UTF-8 JSON, one object, no duplicate keys, no NaN/Infinity;
  - ``application/vnd.kubernetes.protobuf`` (client-go clients configured with ``ContentType`` protobuf,
    as Kubernetes' own components are): the ``k8s\\0`` magic and a ``runtime.Unknown`` envelope, strictly
    well-formed (see :mod:`apiproxy.protowire`), with an empty ``contentEncoding`` and a ``raw`` object
    that is itself well-formed wire format. The object is not decoded further: that needs the schema,
    and the apiserver does it; what the proxy must be sure of is which kind it forwards;

  anything else (YAML, CBOR, form data, ...) is a 415 naming the supported types;
* ``apiVersion`` equal to the URL's ``<group>/<version>`` (``v1`` or ``v1beta1``) and ``kind`` the review's
  kind, spelled exactly (kube's JSON decoding is case-sensitive now, older decoders were not, so keys such
  as ``Kind`` are refused rather than guessed about).

The check only reads: the caller forwards the very bytes it was given. The caller reads at most
``max_bytes + 1`` bytes and decodes any ``Content-Encoding`` before calling.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from apiproxy import protowire
from apiproxy.jsonutil import no_duplicate_keys
from apiproxy.policy.requestinfo import MalformedRequest, RequestInfo

__all__ = [
    "JSON_MEDIA_TYPE",
    "PROTOBUF_MEDIA_TYPE",
    "REVIEW_KINDS",
    "ReviewBodyError",
    "check_review_body",
    "review_media_type",
]

#: (group, resource) → kind, for the reviews a policy may allow.
REVIEW_KINDS: dict[tuple[str, str], str] = {
    ("authentication.k8s.io", "tokenreviews"): "TokenReview",
    ("authorization.k8s.io", "subjectaccessreviews"): "SubjectAccessReview",
}
REVIEW_VERSIONS = frozenset({"v1", "v1beta1"})
DEFAULT_MAX_BYTES = 64 * 1024

JSON_MEDIA_TYPE: Final = "application/json"
PROTOBUF_MEDIA_TYPE: Final = "application/vnd.kubernetes.protobuf"
SUPPORTED_MEDIA_TYPES: Final = (JSON_MEDIA_TYPE, PROTOBUF_MEDIA_TYPE)
_SUPPORTED_TEXT: Final = ", ".join(SUPPORTED_MEDIA_TYPES)

# RFC 9110 tokens: ``type/subtype`` and ``; name=value`` parameters (value a token or a quoted string).
_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"{_TCHARS}/{_TCHARS}")
_PARAMETER = re.compile(rf'\s*;\s*({_TCHARS})\s*=\s*({_TCHARS}|"(?:\\.|[^"\\\r\n])*")')


class ReviewBodyError(MalformedRequest):
    """The review body is not acceptable; ``code`` is 400, 413 (too large) or 415 (media type)."""


def review_media_type(content_type: str | None) -> str:
    """The media type a review body is decoded as, or :class:`ReviewBodyError` 415.

    As kube-apiserver negotiates a request body: no header (or an empty one) means JSON, parameters
    (``charset=utf-8``, ...) are ignored, the comparison is case-insensitive, and anything but JSON and
    Kubernetes protobuf is refused here (kube would also take YAML and CBOR; the review clients we serve
    do not send them, and every decoder we do not run is one less way to disagree with the apiserver)."""
    if not content_type:
        return JSON_MEDIA_TYPE
    base, _, _ = content_type.partition(";")
    media_type = base.strip().lower()
    well_formed = bool(_MEDIA_TYPE.fullmatch(media_type)) and _parameters_ok(content_type[len(base) :])
    if not well_formed or media_type not in SUPPORTED_MEDIA_TYPES:
        shown = media_type if _MEDIA_TYPE.fullmatch(media_type) and len(media_type) <= 80 else "(not shown)"
        raise ReviewBodyError(
            f"Content-Type {shown}{'' if well_formed else ' (malformed)'} is not supported for review "
            f"bodies (supported: {_SUPPORTED_TEXT})",
            code=415,
        )
    return media_type


def _parameters_ok(text: str) -> bool:
    """Whether the ``; name=value`` list parses (as Go's ``mime.ParseMediaType`` would have it parse:
    a trailing ``;`` is fine, a repeated name with another value is not). Values are not used."""
    seen: dict[str, str] = {}
    pos = 0
    while text[pos:].strip():
        match = _PARAMETER.match(text, pos)
        if match is None:
            return text[pos:].strip() == ";"
        name, value = match.group(1).lower(), match.group(2).removeprefix('"').removesuffix('"')
        if seen.setdefault(name, value) != value:
            return False
        pos = match.end()
    return True


def check_review_body(
    info: RequestInfo,
    body: bytes,
    max_bytes: int = DEFAULT_MAX_BYTES,
    content_type: str | None = None,
) -> None:
    """Raise :class:`ReviewBodyError` unless ``body`` is a well-formed review matching ``info``'s URL.

    ``content_type`` is the request's ``Content-Type`` header as sent (``None`` when absent)."""
    kind = REVIEW_KINDS.get((info.api_group, info.resource))
    if info.verb != "create" or kind is None:
        raise ReviewBodyError(f"{info.method} {info.path} is not a review create")
    if info.namespace or info.name or info.subresource:
        raise ReviewBodyError(f"{info.resource} are cluster-scoped and nameless; POST to the collection")
    if info.api_version not in REVIEW_VERSIONS:
        raise ReviewBodyError(f"{info.api_group}/{info.api_version} is not a supported review version")
    media_type = review_media_type(content_type)
    if len(body) > max_bytes:
        raise ReviewBodyError(f"{kind} body is larger than {max_bytes} bytes", code=413)
    api_version: object
    body_kind: object
    if media_type == PROTOBUF_MEDIA_TYPE:
        api_version, body_kind = _protobuf_type(kind, body)
    else:
        api_version, body_kind = _json_type(kind, body)
    expected_version = f"{info.api_group}/{info.api_version}"
    if api_version != expected_version:
        raise ReviewBodyError(
            f"{kind} body has apiVersion {_shown(api_version)}, expected {expected_version!r} (from the URL)"
        )
    if body_kind != kind:
        raise ReviewBodyError(f"body has kind {_shown(body_kind)}, expected {kind!r}")


def _json_type(kind: str, body: bytes) -> tuple[object, object]:
    """``(apiVersion, kind)`` of a JSON review body (``None`` where absent)."""
    if not body.strip():
        raise ReviewBodyError(f"{kind} body is empty")
    if body.startswith(protowire.K8S_MAGIC):
        raise ReviewBodyError(
            f"{kind} body is Kubernetes protobuf but Content-Type is {JSON_MEDIA_TYPE} "
            f"(send Content-Type: {PROTOBUF_MEDIA_TYPE})",
            code=415,
        )
    try:
        doc = json.loads(
            body.decode("utf-8"), object_pairs_hook=no_duplicate_keys, parse_constant=_no_constant
        )
    except UnicodeDecodeError as exc:
        raise ReviewBodyError(f"{kind} body is not UTF-8 JSON", code=415) from exc
    except json.JSONDecodeError as exc:  # its message names a position, never the content
        raise ReviewBodyError(f"{kind} body is not valid JSON: {exc}") from exc
    except ValueError as exc:  # our hooks; a duplicate key is named only when short and printable
        detail = str(exc) if len(str(exc)) <= 100 and str(exc).isprintable() else "a duplicate key"
        raise ReviewBodyError(f"{kind} body is not valid JSON: {detail}") from exc
    except RecursionError as exc:
        raise ReviewBodyError(f"{kind} body is not valid JSON: nested too deeply") from exc
    if not isinstance(doc, dict):
        raise ReviewBodyError(f"{kind} body must be a JSON object")
    for key in doc:
        if key.lower() in ("apiversion", "kind") and key not in ("apiVersion", "kind"):
            raise ReviewBodyError(f"{kind} body has key {key!r}; write apiVersion and kind exactly")
    return doc.get("apiVersion"), doc.get("kind")


def _protobuf_type(kind: str, body: bytes) -> tuple[str, str]:
    """``(apiVersion, kind)`` of a protobuf review body, after proving the whole body well-formed."""
    if not body:
        raise ReviewBodyError(f"{kind} body is empty")
    if not body.startswith(protowire.K8S_MAGIC):
        if body.lstrip()[:1] in (b"{", b"["):
            raise ReviewBodyError(
                f"{kind} body is JSON but Content-Type is {PROTOBUF_MEDIA_TYPE} "
                f"(send Content-Type: {JSON_MEDIA_TYPE})",
                code=415,
            )
        raise ReviewBodyError(f"{kind} body does not start with the Kubernetes protobuf magic k8s\\0")
    if len(body) == len(protowire.K8S_MAGIC):
        raise ReviewBodyError(f"{kind} body is empty after the protobuf magic")
    try:
        envelope = protowire.decode_unknown(body)
    except protowire.WireError as exc:
        raise ReviewBodyError(f"{kind} body is not well-formed Kubernetes protobuf: {exc}") from exc
    if envelope.content_encoding:
        raise ReviewBodyError(
            f"{kind} body has contentEncoding {_shown(envelope.content_encoding)}; only an empty one "
            "(the raw object as is) is accepted"
        )
    if envelope.content_type not in ("", PROTOBUF_MEDIA_TYPE):
        raise ReviewBodyError(
            f"{kind} body has contentType {_shown(envelope.content_type)}; the object must be protobuf"
        )
    return envelope.api_version, envelope.kind


def _shown(value: object) -> str:
    """A body value fit for the client message: short printable strings as they are, else a placeholder.

    The message goes back to the caller and into one log line: no control characters, nothing long."""
    if value is None:
        return "(none)"
    if isinstance(value, str) and len(value) <= 80 and value.isprintable():
        return repr(value)
    return "(not shown)"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
