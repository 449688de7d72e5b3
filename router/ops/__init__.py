"""Running the router: health checks of the servers (`health`, the monitor; `probe`, its asyncpg
probe; `readings`, the pure lag and backoff math), metrics, the HTTP endpoints, the janitor that
owns periodic work, and reloads of the configuration (`reload`).

Must not import the network adapter's internals (router.net): it reads the router through the
core's interfaces.
"""
