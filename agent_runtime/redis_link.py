"""Staying connected to Redis: which errors mean "Redis is unreachable", the backoff between
attempts, and the up/down state that ``/readyz`` and the ``agentops_redis_up`` gauge report.

Every Redis call in the worker is retried forever with this backoff rather than by redis-py, so a
lost reply never makes redis-py repeat a command on its own (see :mod:`agent_runtime.worker`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agent_runtime.metrics import RuntimeMetrics

log = logging.getLogger("agent_runtime")

T = TypeVar("T")
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
BACKOFF_START_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 5.0


class Backoff:
    """Exponential backoff with jitter for Redis reconnects."""

    def __init__(self) -> None:
        self._next = BACKOFF_START_SECONDS

    def next(self) -> float:
        delay = self._next
        self._next = min(BACKOFF_CAP_SECONDS, self._next * 2)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._next = BACKOFF_START_SECONDS


class RedisLink:
    """Whether the last Redis call succeeded; logs only the transitions, not every failed retry."""

    def __init__(self, metrics: RuntimeMetrics, worker_name: str, started: asyncio.Event) -> None:
        self.ok = False
        self._metrics = metrics
        self._worker_name = worker_name
        # Before the worker has started, coming up is the normal first connect, not a recovery.
        self._started = started

    def down(self, exc: BaseException) -> None:
        if self.ok:
            log.warning("Redis unavailable; retrying with backoff", extra={"error": str(exc) or repr(exc)})
        self.ok = False
        self._metrics.redis_up.set(0)

    def up(self) -> None:
        if not self.ok:
            if self._started.is_set():
                log.info("Redis reachable again", extra={"worker": self._worker_name})
            self.ok = True
            self._metrics.redis_up.set(1)

    async def retry(self, call: Callable[[], Awaitable[T]]) -> T:
        """Retry a Redis operation until it succeeds; the caller's deadline bounds it."""
        backoff = Backoff()
        while True:
            try:
                value = await call()
            except REDIS_ERRORS as exc:
                self.down(exc)
                await asyncio.sleep(backoff.next())
                continue
            self.up()
            return value
