"""The PostgreSQL v3 frontend/backend protocol, sans-IO: the message codecs (framing, frontend,
backend, startup, auth, responses), prepared-statement naming, WAL positions, and the session state
machine that decides what reaches each server connection.

Must not import asyncio, sockets, drivers, the network adapter (router.net) or the pools: bytes and
events in, bytes and actions out, unit-tested on bytes.
"""
