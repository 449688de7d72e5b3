"""What router instances agree on through the catalog: who is running, and holds they acknowledge.

Owns, one module each: the registry of running instances (`registry`: `InstanceRegistry`,
`list_instances`, liveness by the catalog database's clock only, so clock skew between router
hosts cannot make an instance look live or stale); holds as their requester sees them (`holds`:
`HoldCoordinator` puts a hold on a tenant and waits until every live instance acknowledges it, or
removes it again and raises `HoldNotAcknowledged`); and an instance's side of holds
(`participant`: `HoldParticipant` sees holds appear and disappear, runs the router's callbacks,
and writes the acknowledgements). Holds expire (`ttl`, the catalog's clock): an expired hold counts
as released everywhere, and `hold_sql(schema).hold_alive` is the SQL by which a move checks, in
its own transaction, that its hold is still in force. The tables are catalog migrations 2 and 3
(router/catalog/schema.py).
The names below are importable from this package.

Must not: implement any consensus of its own (the catalog database is the single point of
agreement), make tenants wait itself (the router's `on_hold`/`on_release` callbacks do), decide
when a hold is needed (rebalancing and migrations do), touch shard servers, or parse arguments and
print.
"""

from router.catalog.cluster.holds import (
    DEFAULT_ACK_POLL_INTERVAL,
    DEFAULT_HOLD_TTL,
    Hold,
    HoldCoordinator,
    HoldSql,
    acks_channel,
    hold_sql,
    holds_channel,
)
from router.catalog.cluster.participant import DEFAULT_HOLD_POLL_INTERVAL, HoldCallback, HoldParticipant
from router.catalog.cluster.registry import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_STALE_AFTER,
    InstanceInfo,
    InstanceRegistry,
    default_instance_id,
    list_instances,
)
from router.errors import ClusterError, HoldNotAcknowledged, TenantAlreadyHeld

__all__ = [
    "DEFAULT_ACK_POLL_INTERVAL",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_HOLD_POLL_INTERVAL",
    "DEFAULT_HOLD_TTL",
    "DEFAULT_STALE_AFTER",
    "ClusterError",
    "Hold",
    "HoldCallback",
    "HoldCoordinator",
    "HoldNotAcknowledged",
    "HoldParticipant",
    "HoldSql",
    "InstanceInfo",
    "InstanceRegistry",
    "TenantAlreadyHeld",
    "acks_channel",
    "default_instance_id",
    "hold_sql",
    "holds_channel",
    "list_instances",
]
