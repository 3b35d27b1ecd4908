"""Who is calling: the result of authentication."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Method = Literal["jwt", "mtls", "jwt+mtls"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated remote cluster.

    ``subject`` is what the credential said about the caller: the JWT ``sub`` (the cluster UUID for
    Deckhouse tokens) or, for mTLS, the certificate SAN or subject that identified it.
    """

    cluster_uuid: str
    cluster_name: str | None
    method: Method
    subject: str

    @property
    def display(self) -> str:
        """The friendly name when one is configured, else the UUID; for messages and logs."""
        return self.cluster_name or self.cluster_uuid
