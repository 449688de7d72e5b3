"""Online rebalancing: moving tenants, with their data, to where shards.yaml (or an operator) puts them.

Owns, one module each: the plan (plan.py: which tenants are not where the topology places them;
pure), its size estimates and the catalog reads behind it (sizes.py), what a shard needs before a
move may use it (prereq.py), moving one tenant (mover.py) and running a plan (apply.py).

Must not: import the serving side (router.protocol, router.net, router.sql, router.app) or the
commands (router.cli). Like router.admin it works on shards through router/admin/shard_access.py
and on the catalog through router.catalog; the running routers learn of a move through the
catalog (its placement switch and its holds), never from this package directly.
"""
