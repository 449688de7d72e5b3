"""SQL analysis, pure: one parse per statement shape (pglast), and every verdict the router needs
from a statement's text (reads only, inert for the hand-over, session effects, tenant statements,
refusals), plus the SQL text the router sends to keep a server session in step.

Must not import the core, the network adapter, any protocol's framing or asyncio: text in, values out.
"""
