"""``Accept`` negotiation: which JSON form a request gets, as kube-apiserver chooses it.

We only speak JSON. A clause is usable if its media type is JSON-compatible (``application/json``,
``application/*``, ``*/*``) and its ``as``/``g``/``v`` parameters, if any, name a conversion the endpoint
supports (``Table`` everywhere a resource is read, ``PartialObjectMetadata[List]`` for metadata-only
clients). Protobuf, YAML and unknown ``as=`` clauses (e.g. aggregated discovery) are skipped; if nothing
is left the answer is 406, which is also what kube says for a media type it cannot produce.
"""

from __future__ import annotations

from dataclasses import dataclass

from apiproxy.status import StatusError

JSON_TYPES = frozenset({"application/json", "application/*", "*/*"})


@dataclass(frozen=True, slots=True)
class Form:
    """``kind``: ``json`` (the object itself), ``table`` or ``meta``; ``version``: meta.k8s.io version."""

    kind: str
    version: str = "v1"


JSON = Form("json")


def _clauses(accept: str) -> list[tuple[str, dict[str, str]]]:
    out = []
    for clause in accept.split(","):
        parts = [p.strip() for p in clause.split(";")]
        if not parts[0]:
            continue
        params: dict[str, str] = {}
        for p in parts[1:]:
            k, _, v = p.partition("=")
            params[k.strip().lower()] = v.strip().strip('"')
        out.append((parts[0].lower(), params))
    return out


def negotiate(accept: str | None, conversions: frozenset[str] = frozenset()) -> Form:
    """Pick the first usable clause; ``conversions`` are the ``as=`` kinds this endpoint offers."""
    if not accept:
        return JSON
    for media, params in _clauses(accept):
        if media not in JSON_TYPES:
            continue
        as_ = params.get("as")
        if as_ is None:
            return JSON
        if as_ not in conversions or params.get("g") != "meta.k8s.io":
            continue
        version = params.get("v", "")
        if version not in ("v1", "v1beta1"):
            continue
        return Form("table" if as_ == "Table" else "meta", version)
    raise StatusError(
        406,
        "only the following media types are accepted: application/json",
        reason="NotAcceptable",
    )


LIST_CONVERSIONS = frozenset({"Table", "PartialObjectMetadataList"})
OBJECT_CONVERSIONS = frozenset({"Table", "PartialObjectMetadata"})
