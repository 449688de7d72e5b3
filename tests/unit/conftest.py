"""Fixtures of the unit tier: the statement analysis's cache, emptied around a test that counts or
inspects it (router/sql/analysis.py keeps one cache for the whole process)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from router.sql import analysis


@pytest.fixture
def fresh_analysis() -> Iterator[None]:
    """An empty cache with zeroed counters, and the cache's bound restored afterwards."""
    limit = analysis._CACHE.limit
    analysis.clear_analysis()
    yield
    analysis.set_cache_limit(limit)
    analysis.clear_analysis()
