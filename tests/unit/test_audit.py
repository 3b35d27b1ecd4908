import json
import uuid

import pytest

from apiproxy.proxy.audit import SAFE_PARAMS, Exchange, audit_id, safe_target


def test_generated_audit_ids_are_random_v4_uuids() -> None:
    ids = {audit_id(None) for _ in range(500)}
    assert len(ids) == 500
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == value


@pytest.mark.parametrize("incoming", ["trace-123", "a" * 128, "0f:1.2_3-4"])
def test_well_formed_client_audit_ids_are_kept(incoming: str) -> None:
    assert audit_id(incoming) == incoming


@pytest.mark.parametrize("incoming", ["", "a" * 129, "has space", "new\nline", 'quote"d', "ü"])
def test_other_client_audit_ids_are_replaced(incoming: str) -> None:
    assert audit_id(incoming) != incoming


def test_a_record_of_a_never_classified_request_escapes_and_bounds_the_target() -> None:
    record = Exchange("GET", "/\x1b[31m" + "x" * 1000, "10.0.0.1", "id").record()
    assert "\x1b" not in record["target"] and len(record["target"]) < 600
    assert record["cluster"] is None and record["decision"] == "error"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/api/v1/pods", "/api/v1/pods"),
        ("/api/v1/pods?access_token=eyJhbGciOi.e30.c2ln", "/api/v1/pods?access_token=REDACTED"),
        (
            "/api/v1/pods?labelSelector=app%3Dx&limit=5&token=abc&watch=1",
            "/api/v1/pods?labelSelector=app%3Dx&limit=5&token=REDACTED&watch=1",
        ),
        ("/api/v1/pods?eyJhbGciOi.e30.c2ln", "/api/v1/pods?REDACTED"),  # a bare value
        ("/api/v1/pods?a%20b=secret&=secret", "/api/v1/pods?REDACTED&REDACTED"),  # odd or no names
        ("/p\u00f6ds?access_token=s\u00e9cret", "/p\\xf6ds?access_token=REDACTED"),
        ("/x?resourceVersion=12&timeoutSeconds=30", "/x?resourceVersion=12&timeoutSeconds=30"),
    ],
)
def test_safe_target_keeps_names_and_safe_values_only(target: str, expected: str) -> None:
    assert safe_target(target) == expected


def test_safe_target_is_bounded_and_escaped() -> None:
    text = safe_target("/\r\n" + "x" * 500 + "?access_token=secret", limit=100)
    assert "\r" not in text and "\n" not in text and "secret" not in text
    assert len(text) <= 110


def test_every_forwarded_parameter_is_safe_and_credentials_are_not() -> None:
    assert {"labelSelector", "fieldSelector", "resourceVersion", "watch", "limit", "continue"} <= SAFE_PARAMS
    assert not {"access_token", "token", "authorization", "password"} & SAFE_PARAMS


def test_a_record_of_a_refused_request_redacts_query_values() -> None:
    record = Exchange("GET", "/api/v1/pods?access_token=top-secret&limit=1", "10.0.0.1", "id").record()
    assert record["target"] == "/api/v1/pods?access_token=REDACTED&limit=1"
    assert "top-secret" not in json.dumps(record)


def test_a_record_of_an_unreadable_request_has_no_target() -> None:
    record = Exchange("", "", "10.0.0.1", "id").record()
    assert record["target"] is None and record["method"] is None and record["source"] == "10.0.0.1"
