"""Operator commands on tenants and shards: tenant admin (catalog records), lifecycle (export,
import, erase), provisioning (roles, schemas, databases on the shards) and row-level security.

Must not import the network adapter (router.net) or the composition root: admin work goes through
the catalog and the core, and talks to shards as the admin role.
"""
