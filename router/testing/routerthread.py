"""A real router running in a background thread with its own event loop, for tests and benchmarks.

Running the router off the test's thread lets blocking clients (psql, psycopg's sync API,
pgbench) and async ones share one process without deadlocking each other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

from router.app import Router, RunningRouter, start
from router.config import RouterConfig
from router.core.topology import Topology

T = TypeVar("T")


class RouterThread:
    """Start with `RouterThread(config, topology).start()`; `.port`, `.router`; `.stop()`."""

    def __init__(self, config: RouterConfig, topology: Topology) -> None:
        self._config = config
        self._topology = topology
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tenant-router", daemon=True)
        self._running: RunningRouter | None = None

    def start(self) -> RouterThread:
        self._thread.start()
        self._running = self.call(start(self._config, self._topology))
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the router's loop and wait for its result."""
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    @property
    def running(self) -> RunningRouter:
        assert self._running is not None
        return self._running

    @property
    def router(self) -> Router:
        return self.running.router

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def http_port(self) -> int:
        return self.running.http_port

    def stop(self) -> None:
        if self._running is not None:
            self.call(self._running.stop())
            self._running = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()
