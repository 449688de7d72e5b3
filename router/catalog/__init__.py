"""The central catalog: the tenant table and its cache with change notifications (store), and what
router instances agree on through it: the registry of live instances and the holds they acknowledge
(cluster).

Must not import the network adapter (router.net) or any wire protocol: it speaks to the catalog
database only.
"""
