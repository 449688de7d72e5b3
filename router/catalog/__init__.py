"""The central catalog, one responsibility per module:

- `schema`: the catalog's tables, their migrations, the `Tenant` record and the SQL over it;
- `access`: reaching the catalog database, and what a failure there means (CatalogUnavailable,
  CatalogError);
- `store`: `CatalogStore`, which creates the schema and edits tenants (admin commands);
- `cache`: `CatalogCache`, the running router's copy, kept fresh by LISTEN/NOTIFY;
- `cluster/`: what router instances agree on through it: the registry of live instances
  (`registry`), the holds they acknowledge (`holds`: requesting one; `participant`: an instance's
  side).

Must not import the network adapter (router.net), any wire protocol, the admin side or the
operations side: it speaks to the catalog database only.
"""
