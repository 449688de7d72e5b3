"""SQL analysis, pure: one parse per statement shape (pglast), and every verdict the router needs
from a statement's text (reads only, inert for the hand-over, session effects, tenant statements,
refusals), plus the SQL text the router sends to keep a server session in step.

- `analysis`: the one statement analysis, `analyse(sql)` / `analyse_text(bytes)` -> `Analysis`,
  its one bounded cache (by shape) and counters (`analysis_stats()`); compiled with mypyc.
- The rules it applies to the one parse tree (`tree`), each pure and uncached: `effects` (with
  `setting_values`), `session_residue`, `plain_reads`; `shapes` normalises literals.
- Views over the analysis with the names the rest of the router used before it: `statements`
  (classify), `inert_statements` (residue, residue_text), `read_statements` (ReadClassifier,
  begins_read_only), `prepared_sql` (statement_names_used).
- `tenant_statements` (the router's own SET/SHOW router.tenant, a regular expression), and the SQL
  the router sends: `session_sql`, `tenant_entry`.

Must not import the core, the network adapter, any protocol's framing or asyncio: text in, values out.
"""
