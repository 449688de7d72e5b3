"""tenant-router: a tenant-aware PostgreSQL router."""

__version__ = "0.1.0"
