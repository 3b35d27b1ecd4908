"""Kubernetes ``Status`` error bodies.

Every refusal the proxy makes looks exactly like one from kube-apiserver, so kubectl, client-go and the
Python client show a readable message and apply their usual handling (client-go backs off on 429 with
``Retry-After``, relists on 410, and so on).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

#: HTTP status code → the ``reason`` kube-apiserver uses for it (``metav1.StatusReason``).
REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

CONTENT_TYPE = "application/json"


def status_dict(
    code: int,
    message: str,
    *,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``Status`` object as kube-apiserver serialises it for a failure."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or REASONS.get(code, ""),
        "code": code,
    }
    if details:
        body["details"] = dict(details)
    return body


def status_bytes(
    code: int,
    message: str,
    *,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> bytes:
    return json.dumps(status_dict(code, message, reason=reason, details=details)).encode() + b"\n"


def status_response(
    code: int,
    message: str,
    *,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An aiohttp response carrying a ``Status`` body with the matching HTTP code."""
    return web.Response(
        status=code,
        body=status_bytes(code, message, reason=reason, details=details),
        content_type=CONTENT_TYPE,
        headers=headers,
    )


class StatusError(Exception):
    """Raised anywhere in the request pipeline to answer with a ``Status``; the server renders it."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "")
        self.details = dict(details) if details else None
        self.headers = dict(headers) if headers else None

    def response(self) -> web.Response:
        return status_response(
            self.code, self.message, reason=self.reason, details=self.details, headers=self.headers
        )
