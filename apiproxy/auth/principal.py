"""Who is calling: the result of authentication."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Method = Literal["jwt", "mtls", "jwt+mtls"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated remote cluster.

    ``subject`` is what the credential said about the caller: the JWT ``sub`` (the cluster UUID for
    Deckhouse tokens) or, for mTLS, the certificate SAN or subject that identified it.

    ``expires_at`` is when the credential stops being valid (a token's ``exp``, leeway included), or
    None: a watch opened with it must not outlive it, or an expired (or stolen and expired) token would
    keep streaming until the watch's own timeout.
    """

    cluster_uuid: str
    cluster_name: str | None
    method: Method
    subject: str
    expires_at: float | None = field(default=None, compare=False)  # who it is, not until when

    @property
    def display(self) -> str:
        """The friendly name when one is configured, else the UUID; for messages and logs."""
        return self.cluster_name or self.cluster_uuid
