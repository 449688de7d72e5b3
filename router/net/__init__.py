"""Thin asyncio adapters: client and server sockets, flow control and timers, wiring the PostgreSQL
session (router.protocol.pg) to the lease (router.core).

Must not make protocol or routing decisions of its own.
"""
