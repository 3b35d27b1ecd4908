"""Status conditions: the four Deckhouse types, our reasons, and transitions (which become Events).

A condition keeps its ``lastTransitionTime`` while its status is unchanged, so a resync that finds
nothing new changes nothing in the status (and writes no Event).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

PUBLIC: Final = "PublicMetadataExchangeReady"
PRIVATE: Final = "PrivateMetadataExchangeReady"
REMOTE_API: Final = "RemoteAPIServerReady"
READY: Final = "Ready"
#: False only while ``spec.metadata.insecureSkipVerify`` is set; not part of Ready.
TLS_VERIFIED: Final = "TLSVerified"
TYPES: Final = (PUBLIC, PRIVATE, REMOTE_API, READY, TLS_VERIFIED)


class Reason:
    """Every reason the controller sets; stable strings that alerts and runbooks may match."""

    FETCHED = "Fetched"
    REACHABLE = "Reachable"
    ESTABLISHED = "Established"
    INVALID_SPEC = "InvalidSpec"
    FETCH_FAILED = "FetchFailed"
    TIMEOUT = "Timeout"
    REDIRECT = "RedirectRefused"
    TOO_LARGE = "ResponseTooLarge"
    NON_OK = "NonOKResponse"
    INVALID_JSON = "InvalidJSON"
    INVALID_PUBLIC = "InvalidPublicMetadata"
    INVALID_PRIVATE = "InvalidPrivateMetadata"
    IDENTITY_CHANGED = "RemoteIdentityChanged"
    UNEXPECTED_UUID = "UnexpectedClusterUUID"
    OWN_UUID = "ClaimsOwnClusterUUID"
    DUPLICATE_PEER = "DuplicatePeer"
    TOKEN_REJECTED = "TokenRejected"  # noqa: S105 (a reason, not a secret)
    INSECURE = "InsecureSkipVerify"
    WAITING = "WaitingForPublicMetadata"
    WAITING_PRIVATE = "WaitingForPrivateMetadata"
    NOT_APISERVER = "NotAnAPIServer"
    NOT_READY = "RemoteNotReady"


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    ok: bool
    reason: str
    message: str

    @property
    def status(self) -> str:
        return "True" if self.ok else "False"


def merge(
    previous: Sequence[Mapping[str, Any]] | None,
    current: Iterable[Condition],
    *,
    now: str,
    generation: int | None,
) -> tuple[list[dict[str, Any]], list[Condition]]:
    """New ``status.conditions`` and the conditions whose status or reason changed (for Events)."""
    old = {c.get("type"): c for c in previous or () if isinstance(c, Mapping)}
    out: list[dict[str, Any]] = []
    changed: list[Condition] = []
    for cond in current:
        before = old.get(cond.type)
        same_status = before is not None and before.get("status") == cond.status
        if before is None or not same_status or before.get("reason") != cond.reason:
            changed.append(cond)
        transition = before.get("lastTransitionTime") if same_status and before is not None else now
        entry: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": transition or now,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    return out, changed


def ready(conditions: Iterable[Condition]) -> Condition:
    """``Ready`` is the first failing step's reason, or ``Established``."""
    for cond in conditions:
        if not cond.ok:
            return Condition(READY, False, cond.reason, f"{cond.type}: {cond.message}")
    return Condition(READY, True, Reason.ESTABLISHED, "multicluster established with this peer")
