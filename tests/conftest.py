"""Shared test fixtures: the real PostgreSQL environment for the integration tier.

Owns the session's throwaway clusters: started once in a fresh directory under /tmp, stopped and
removed at session end, with an atexit sweep (and SIGTERM treated like Ctrl-C) so an
interrupted run leaves no postmaster behind. Tests under tests/integration get the `integration`
marker, so `-m integration` / `-m "not integration"` select the tiers.
"""

from __future__ import annotations

import atexit
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from router.testing.pgcluster import PgEnvironment, start_environment, stop_clusters_under

_INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _remove(base_dir: Path) -> None:
    stop_clusters_under(base_dir)
    shutil.rmtree(base_dir, ignore_errors=True)


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Like Ctrl-C: pytest stops the session and runs teardown; the default action would skip both.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def pg_env() -> Iterator[PgEnvironment]:
    """A catalog cluster and shards shard_a, shard_b, running for the whole session."""
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    base_dir = Path(tempfile.mkdtemp(prefix="tenant-router-pg-", dir="/tmp"))
    base_dir.chmod(0o755)
    atexit.register(_remove, base_dir)
    try:
        env = start_environment(base_dir)
        try:
            yield env
        finally:
            env.stop()
    finally:
        _remove(base_dir)
        atexit.unregister(_remove)
