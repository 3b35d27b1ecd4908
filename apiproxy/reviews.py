"""Check the body of an allowed review POST before it is forwarded.

The only POSTs a policy may allow are ``authentication.k8s.io`` ``tokenreviews`` and
``authorization.k8s.io`` ``subjectaccessreviews`` (cluster-scoped; ``localsubjectaccessreviews`` are
namespaced and out of scope). They persist nothing, but the body still has to be what the URL says, so a
policy decision about a TokenReview cannot be turned into something else by the body:

* at most ``max_bytes`` (64 KiB by default: a TokenReview carries one JWT, a SubjectAccessReview a user,
  groups and attributes);
* UTF-8 JSON (not protobuf, not YAML), one object, no duplicate keys, no NaN/Infinity;
* ``apiVersion`` equal to the URL's ``<group>/<version>`` (``v1`` or ``v1beta1``) and ``kind`` the review's
  kind, spelled exactly (kube's JSON decoding is case-sensitive now, older decoders were not, so keys such
  as ``Kind`` are refused rather than guessed about).

The caller reads at most ``max_bytes + 1`` bytes and decodes any ``Content-Encoding`` before calling.
"""

from __future__ import annotations

import json
from typing import Any

from apiproxy.jsonutil import no_duplicate_keys
from apiproxy.requestinfo import MalformedRequest, RequestInfo

__all__ = ["REVIEW_KINDS", "ReviewBodyError", "check_review_body"]

#: (group, resource) → kind, for the reviews a policy may allow.
REVIEW_KINDS: dict[tuple[str, str], str] = {
    ("authentication.k8s.io", "tokenreviews"): "TokenReview",
    ("authorization.k8s.io", "subjectaccessreviews"): "SubjectAccessReview",
}
REVIEW_VERSIONS = frozenset({"v1", "v1beta1"})
DEFAULT_MAX_BYTES = 64 * 1024


class ReviewBodyError(MalformedRequest):
    """The review body is not acceptable; ``code`` is 400, 413 (too large) or 415 (not JSON)."""


def check_review_body(info: RequestInfo, body: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Raise :class:`ReviewBodyError` unless ``body`` is a well-formed review matching ``info``'s URL."""
    kind = REVIEW_KINDS.get((info.api_group, info.resource))
    if info.verb != "create" or kind is None:
        raise ReviewBodyError(f"{info.method} {info.path} is not a review create")
    if info.namespace or info.name or info.subresource:
        raise ReviewBodyError(f"{info.resource} are cluster-scoped and nameless; POST to the collection")
    if info.api_version not in REVIEW_VERSIONS:
        raise ReviewBodyError(f"{info.api_group}/{info.api_version} is not a supported review version")
    if len(body) > max_bytes:
        raise ReviewBodyError(f"{kind} body is larger than {max_bytes} bytes", code=413)
    if not body.strip():
        raise ReviewBodyError(f"{kind} body is empty")
    try:
        doc = json.loads(
            body.decode("utf-8"), object_pairs_hook=no_duplicate_keys, parse_constant=_no_constant
        )
    except UnicodeDecodeError as exc:
        raise ReviewBodyError(f"{kind} body is not UTF-8 JSON", code=415) from exc
    except ValueError as exc:  # json.JSONDecodeError, and our hooks
        raise ReviewBodyError(f"{kind} body is not valid JSON: {exc}", code=_json_code(body)) from exc
    if not isinstance(doc, dict):
        raise ReviewBodyError(f"{kind} body must be a JSON object")
    for key in doc:
        if key.lower() in ("apiversion", "kind") and key not in ("apiVersion", "kind"):
            raise ReviewBodyError(f"{kind} body has key {key!r}; write apiVersion and kind exactly")
    expected_version = f"{info.api_group}/{info.api_version}"
    if doc.get("apiVersion") != expected_version:
        raise ReviewBodyError(
            f"{kind} body has apiVersion {doc.get('apiVersion')!r}, "
            f"expected {expected_version!r} (from the URL)"
        )
    if doc.get("kind") != kind:
        raise ReviewBodyError(f"body has kind {doc.get('kind')!r}, expected {kind!r}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_code(body: bytes) -> int:
    """415 when the body is clearly another media type (protobuf starts with ``k8s\\0``), else 400."""
    return 415 if body.startswith(b"k8s\x00") else 400
