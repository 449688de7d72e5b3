"""tenant-router: a tenant-aware PostgreSQL router."""

from router.native import refuse_stale

__version__ = "0.1.0"

# A compiled module whose source was edited since would run the old code: fail instead (router/native.py).
refuse_stale()
