"""Where one tenant's transactions run: the target a tenant resolves to, with no protocol in it.

Must not import any protocol, network or driver code: every front end (PostgreSQL today) reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.core.pool import Pool
    from router.core.replicas import ReplicaMember


@dataclass(frozen=True, slots=True)
class Entry:
    """The tenant a server session of the router's own role must have entered before a client's
    statements run on it (router/admin/rls.py: what shared tenants' row-level security reads), and the
    signature that lets the router enter it. Tenant "" is none: the session leaves what it had."""

    tenant: str
    signature: str = ""


@dataclass(frozen=True, slots=True)
class Target:
    """Where one tenant's transactions run, and the session settings that make a server theirs."""

    tenant: str
    shard: str
    pool: Pool  # the primary's
    context: dict[str, str]
    replicas: tuple[ReplicaMember, ...] = ()
    # With a context secret, on the router's own role: the tenant to enter (router.enter_tenant).
    entry: Entry | None = None

    @property
    def shares_role(self) -> bool:
        """Its server sessions act as the router's own role, which every shared tenant shares
        (hardened setup): what belongs to a role rather than to rows, large objects, is refused."""
        return self.entry is not None and self.entry.tenant != ""
