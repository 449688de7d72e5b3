"""Benchmarks: the router against PostgreSQL directly (and PgBouncer, when installed), with pgbench."""
