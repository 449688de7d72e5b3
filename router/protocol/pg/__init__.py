"""The PostgreSQL v3 frontend/backend protocol, sans-IO: the message codecs (framing, frontend,
backend, startup, auth, responses), prepared-statement naming, WAL positions, and the session state
machine that decides what reaches each server connection (session.py, on session_core.py and
extended.py), with its model of each server session (server_session.py).

Must not import asyncio, sockets, drivers, the network adapter (router.net), the pools or the lease
(router.core.pool, router.core.lease): bytes and events in, bytes and actions out, unit-tested on bytes.
"""
