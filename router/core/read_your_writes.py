"""Read-your-writes per tenant: the position of each tenant's last commit, which a replica must
have replayed before it serves that tenant's reads.

Owns: the last commit position noted per tenant, and the commits whose position is still being
read (until it is noted, the tenant's reads need a position no replica has: they go to the
primary). Positions are opaque integers that only grow (PostgreSQL's WAL positions today).

Must not: read positions from servers (the protocol layer does and calls `note_commit`), choose
replicas (router.core.replicas), or import any protocol or network code.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["UNKNOWN_POSITION", "CommitPositions"]

# A position no replica has replayed: reads that must see a commit not located yet.
UNKNOWN_POSITION = (1 << 64) - 1


class CommitPositions:
    """`mode` is reads.read_your_writes: only "tenant" keeps anything here ("session" is the
    session's own business, "off" nothing)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._positions: dict[str, int] = {}
        # Tenants with a write just committed whose position is still being read: their reads
        # go to the primary meanwhile.
        self._pending: Counter[str] = Counter()

    def note_commit(self, tenant: str, lsn: int) -> None:
        if self.mode == "tenant" and lsn > self._positions.get(tenant, -1):
            self._positions[tenant] = lsn

    def commit_pending(self, tenant: str) -> None:
        if self.mode == "tenant":
            self._pending[tenant] += 1

    def commit_settled(self, tenant: str) -> None:
        # Also called after a commit_pending that kept nothing (another mode): then a no-op.
        if self._pending[tenant] <= 1:
            self._pending.pop(tenant, None)
        else:
            self._pending[tenant] -= 1

    def position(self, tenant: str) -> int | None:
        """What a replica must have replayed to serve `tenant`'s reads, or None: any will do."""
        if tenant in self._pending:
            return UNKNOWN_POSITION
        return self._positions.get(tenant)

    def forget(self, tenant: str) -> None:
        """The tenant changed in the catalog (moved, say): its old position means nothing."""
        self._positions.pop(tenant, None)
