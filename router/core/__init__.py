"""The routing core, protocol-agnostic: tenant -> target, placement on the ring, the topology, pools
generic over a connector, replica choice, and the lease that serves one tenant's transaction.

Must not import any wire protocol (router.protocol), network adapter (router.net), SQL analysis
(router.sql), driver (asyncpg, aiomysql) or socket code, nor the composition root (router.app):
every front end, PostgreSQL today and MySQL next, builds on it.
"""
