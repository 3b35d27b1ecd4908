"""reviews.check_review_body: the body of an allowed review POST must be what its URL says."""

# ruff: noqa: E501  (the case table reads best one case per line)
from __future__ import annotations

import json

import pytest

from apiproxy.requestinfo import classify
from apiproxy.reviews import ReviewBodyError, check_review_body

TR = "/apis/authentication.k8s.io/v1/tokenreviews"
SAR = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


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
        (TR, b"k8s\x00\x0a\x0b", 415, "not valid JSON"),
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


def test_get_is_not_a_review() -> None:
    with pytest.raises(ReviewBodyError):
        check_review_body(classify("GET", "/apis/authentication.k8s.io/v1/tokenreviews/x"), b"{}")


def test_max_bytes_is_configurable() -> None:
    payload = body(apiVersion="authentication.k8s.io/v1", kind="TokenReview")
    check_review_body(classify("POST", TR), payload, max_bytes=len(payload))
    with pytest.raises(ReviewBodyError):
        check_review_body(classify("POST", TR), payload, max_bytes=len(payload) - 1)
