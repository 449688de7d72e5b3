"""Running the router: health checks of the servers, metrics, the HTTP endpoints, the janitor that
owns periodic work, and reloads of the configuration.

Must not import the network adapter's internals (router.net): it reads the router through the
core's interfaces.
"""
