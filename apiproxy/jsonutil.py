"""Strict JSON parsing shared by the parts that read untrusted JSON (token segments, review bodies)."""

from __future__ import annotations

from typing import Any


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` refusing repeated keys: two parsers could each keep a different one."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result
