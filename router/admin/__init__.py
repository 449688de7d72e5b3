"""Operator commands on tenants and shards. One module per responsibility:

- tenant_admin.py: the catalog side of `catalog init` and `tenants add/list/show/suspend/resume/remove`.
- provisioning.py: a tenant's role and schema or database on its shard (create, drop, schema files).
- rls.py: the SQL text of shard-side isolation (security objects, policies, tenant roles); pure.
- rls_enable.py: `rls enable`, row-level security on a shared table on every shard primary.
- role_audit.py: the read-only audit of the router's own role that `check` runs (and rls enable reports).
- shard_access.py: logins and admin connections to shard primaries, and how a shard failure reads.
- tenant_lifecycle/: `tenants export/import/erase`: the archive (pure), the shard side, one module per command.

Their errors are in router/errors.py (the admin section).

Must not import the network adapter (router.net), the operations side (router.ops) or the
composition root (router.app): admin work goes through the catalog and the core, and talks to
shards as the admin role, through shard_access.py.
"""
