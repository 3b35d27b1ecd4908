import uuid

import pytest

from apiproxy.audit import Exchange, audit_id


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
