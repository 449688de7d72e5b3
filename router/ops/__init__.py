"""Running the router: health checks of the servers (`health`, the monitor; `probe`, its asyncpg
probe; `readings`, the pure lag and backoff math), metrics, the HTTP endpoints on aiohttp (`http`,
one process's; `http_api`, the /v1/ API; `http_workers`, a supervisor's; `http_common`, tokens and
JSON errors; `openapi.json`, their document), the janitor that owns periodic work, and reloads of
the configuration (`reload`).

Must not import the network adapter's internals (router.net): it reads the router through the
core's interfaces.
"""
