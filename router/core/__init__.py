"""The routing core, protocol-agnostic: tenant -> target, placement on the ring, the topology, pools
generic over a connector, replica choice, and the lease that serves one tenant's transaction.

The parts: topology.py (shards.yaml, server keys), hashing.py and routing.py (placement, pure),
targets.py (tenant -> target), target.py (the target's shape), pool.py (a bounded pool over any
Connector), registry.py (the process's pools and the capacity servers share), replicas.py (which
replica serves a read), read_your_writes.py (each tenant's last commit position), holds.py
(tenant holds and their drain), limits.py (logged-in clients, per-tenant limits), cancel_keys.py.

Must not import any wire protocol (router.protocol), network adapter (router.net), SQL analysis
(router.sql), driver (asyncpg, aiomysql) or socket code, nor the composition root (router.app):
every front end, PostgreSQL today and MySQL next, builds on it.
"""
